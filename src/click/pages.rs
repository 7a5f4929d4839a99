//! The click pages: small, self-contained HTML (inline CSS, no script, nothing
//! loaded from elsewhere), readable on a phone, in the user's language when a
//! translation exists (English otherwise), with dates in the user's time zone.
//!
//! Decisions:
//! - Every page a known link leads to is in the link's language, the limits and
//!   the contact page included; a page shown before the link is known (not
//!   recognised, the per-address limit) is in the browser's `Accept-Language`.
//! - A date is written by the email's formatter
//!   ([`crate::domain::locale::format_datetime_in`], ICU4X): the deadline a person reads in
//!   the email is the one the page shows, spelt the same.
//! - The texts promise nothing the worker may not do: an expired link does not
//!   announce a new message (reminders may be used up, the campaign over), a
//!   limit says which limit and until when, the contact page does not ask for a
//!   reply to a mail marked `Auto-Submitted` that may have no Reply-To.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

pub use crate::domain::DeferReason;
pub use crate::domain::locale::Lang;

/// The instant as the email writes it ([`crate::domain::locale::format_datetime_in`],
/// `Friday 27 November 2026 at 16:00 CET`), in `zone` (the user's, else the
/// campaign's: [`crate::store::links::LinkRow::zone`]) and the reader's language; UTC
/// when no zone is known.
pub fn when(at: DateTime<Utc>, zone: Option<&str>, reader: impl Into<Reader>) -> Option<String> {
    let tz: Tz = zone.and_then(|z| z.trim().parse().ok()).unwrap_or(Tz::UTC);
    Some(crate::domain::locale::format_datetime_in(at, tz, reader.into().code()))
}

/// Whether `until` falls on a later day than `now`, in the user's zone: a daily
/// limit then says "tomorrow".
pub fn is_another_day(now: DateTime<Utc>, until: DateTime<Utc>, zone: Option<&str>) -> bool {
    let tz: Tz = zone.and_then(|z| z.trim().parse().ok()).unwrap_or(Tz::UTC);
    until.with_timezone(&tz).date_naive() > now.with_timezone(&tz).date_naive()
}

/// A page to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The link's page: a button that submits the click.
    Landing { expires: Option<String> },
    /// The user is verified already.
    Verified,
    /// A verification is being reviewed.
    Pending,
    /// A limit holds until `at` (unknown when the API said so); `why` is the
    /// limit when we know it, `tomorrow` whether `at` is on a later day.
    NotYet { at: Option<String>, why: Option<DeferReason>, tomorrow: bool },
    /// A click of this link made a session less than 30 s ago.
    OnItsWay,
    /// No such link.
    NotFound,
    /// Expired or revoked.
    Gone,
    /// Too many requests.
    TooMany,
    /// Something failed on our side or at Baanx; try again.
    TryLater,
    /// The account cannot be verified from here; contact support.
    Contact,
}

struct Text {
    title: &'static str,
    body: &'static str,
}

fn text(page: &Page, lang: Lang) -> Text {
    use Lang::*;
    let t = |title, body| Text { title, body };
    match (page, lang) {
        (Page::Landing { .. }, En) => t(
            "Verify your identity",
            "Press the button to open your secure verification page. It takes about five minutes; have your ID ready.",
        ),
        (Page::Landing { .. }, De) => t(
            "Bestätigen Sie Ihre Identität",
            "Tippen Sie auf die Schaltfläche, um Ihre sichere Verifizierungsseite zu öffnen. Es dauert etwa fünf Minuten; halten Sie Ihren Ausweis bereit.",
        ),
        (Page::Landing { .. }, Fr) => t(
            "Confirmez votre identité",
            "Appuyez sur le bouton pour ouvrir votre page de vérification sécurisée. Comptez environ cinq minutes et gardez votre pièce d’identité à portée de main.",
        ),
        (Page::Landing { .. }, Es) => t(
            "Verifique su identidad",
            "Pulse el botón para abrir su página de verificación segura. Le llevará unos cinco minutos; tenga a mano su documento de identidad.",
        ),
        (Page::Landing { .. }, It) => t(
            "Verifichi la sua identità",
            "Prema il pulsante per aprire la sua pagina di verifica sicura. Ci vogliono circa cinque minuti: tenga a portata di mano un documento d’identità.",
        ),
        (Page::Landing { .. }, Nl) => t(
            "Verifieer uw identiteit",
            "Druk op de knop om uw beveiligde verificatiepagina te openen. Het duurt ongeveer vijf minuten; houd uw identiteitsbewijs bij de hand.",
        ),
        (Page::Landing { .. }, Pt) => t(
            "Confirme a sua identidade",
            "Carregue no botão para abrir a sua página de verificação segura. Demora cerca de cinco minutos; tenha o seu documento de identificação à mão.",
        ),
        (Page::Verified, En) => {
            t("You are verified", "Your identity is already confirmed. There is nothing more to do.")
        }
        (Page::Verified, De) => {
            t("Ihre Identität ist bestätigt", "Ihre Identität ist bereits bestätigt. Sie müssen nichts weiter tun.")
        }
        (Page::Verified, Fr) => {
            t("Votre identité est vérifiée", "Votre identité est déjà confirmée. Vous n’avez rien d’autre à faire.")
        }
        (Page::Verified, Es) => {
            t("Su identidad está verificada", "Su identidad ya está confirmada. No tiene que hacer nada más.")
        }
        (Page::Verified, It) => t("Verifica completata", "La sua identità è già confermata. Non deve fare altro."),
        (Page::Verified, Nl) => {
            t("Uw identiteit is geverifieerd", "Uw identiteit is al geverifieerd. U hoeft verder niets te doen.")
        }
        (Page::Verified, Pt) => t(
            "A sua identidade está verificada",
            "A sua identidade já está confirmada. Não precisa de fazer mais nada.",
        ),
        (Page::Pending, En) => t(
            "We are checking your documents",
            "Your verification has been submitted and is being reviewed. We will let you know when it is done.",
        ),
        (Page::Pending, De) => t(
            "Wir prüfen Ihre Unterlagen",
            "Ihre Verifizierung ist eingegangen und wird geprüft. Wir melden uns, sobald sie abgeschlossen ist.",
        ),
        (Page::Pending, Fr) => t(
            "Nous vérifions vos documents",
            "Votre vérification a bien été envoyée et est en cours d’examen. Nous vous préviendrons dès qu’elle sera terminée.",
        ),
        (Page::Pending, Es) => t(
            "Estamos revisando sus documentos",
            "Hemos recibido su verificación y la estamos revisando. Le avisaremos cuando esté lista.",
        ),
        (Page::Pending, It) => t(
            "Stiamo controllando i suoi documenti",
            "Abbiamo ricevuto la sua verifica e la stiamo esaminando. La avviseremo appena sarà conclusa.",
        ),
        (Page::Pending, Nl) => t(
            "We controleren uw documenten",
            "Uw verificatie is ontvangen en wordt beoordeeld. We laten het u weten zodra die klaar is.",
        ),
        (Page::Pending, Pt) => t(
            "Estamos a analisar os seus documentos",
            "Recebemos a sua verificação e estamos a analisá-la. Avisamos assim que estiver concluída.",
        ),
        (Page::NotYet { why, .. }, lang) => not_yet(*why, lang),
        (Page::OnItsWay, En) => t(
            "Your page is on its way",
            "Your verification page is already opening. If nothing happened, wait half a minute and press the button again.",
        ),
        (Page::OnItsWay, De) => t(
            "Ihre Seite wird geöffnet",
            "Ihre Verifizierungsseite öffnet sich bereits. Falls nichts passiert ist, warten Sie eine halbe Minute und tippen Sie erneut auf die Schaltfläche.",
        ),
        (Page::OnItsWay, Fr) => t(
            "Votre page arrive",
            "Votre page de vérification est déjà en train de s’ouvrir. Si rien ne s’est passé, attendez une demi-minute et appuyez de nouveau sur le bouton.",
        ),
        (Page::OnItsWay, Es) => t(
            "Su página se está abriendo",
            "Su página de verificación ya se está abriendo. Si no ha pasado nada, espere medio minuto y vuelva a pulsar el botón.",
        ),
        (Page::OnItsWay, It) => t(
            "La pagina si sta aprendo",
            "La sua pagina di verifica si sta già aprendo. Se non succede nulla, attenda mezzo minuto e prema di nuovo il pulsante.",
        ),
        (Page::OnItsWay, Nl) => t(
            "Uw pagina wordt geopend",
            "Uw verificatiepagina wordt al geopend. Gebeurt er niets, wacht dan een halve minuut en druk opnieuw op de knop.",
        ),
        (Page::OnItsWay, Pt) => t(
            "A sua página está a abrir",
            "A sua página de verificação já está a abrir. Se nada acontecer, aguarde meio minuto e carregue novamente no botão.",
        ),
        (Page::NotFound, En) => {
            t("Link not recognised", "This link is not valid. Check that you opened the whole link from your message.")
        }
        (Page::NotFound, De) => t(
            "Link nicht erkannt",
            "Dieser Link ist ungültig. Prüfen Sie, ob Sie den vollständigen Link aus Ihrer Nachricht geöffnet haben.",
        ),
        (Page::NotFound, Fr) => t(
            "Lien non reconnu",
            "Ce lien n’est pas valable. Vérifiez que vous avez ouvert le lien complet de votre message.",
        ),
        (Page::NotFound, Es) => t(
            "Enlace no reconocido",
            "Este enlace no es válido. Compruebe que ha abierto el enlace completo de su mensaje.",
        ),
        (Page::NotFound, It) => t(
            "Link non riconosciuto",
            "Questo link non è valido. Controlli di aver aperto il link completo del messaggio.",
        ),
        (Page::NotFound, Nl) => t(
            "Link niet herkend",
            "Deze link is ongeldig. Controleer of u de volledige link uit uw bericht hebt geopend.",
        ),
        (Page::NotFound, Pt) => t(
            "Ligação não reconhecida",
            "Esta ligação não é válida. Verifique se abriu a ligação completa da sua mensagem.",
        ),
        (Page::Gone, En) => t(
            "This link is no longer valid",
            "The link has expired or is no longer needed. If you still need to verify your identity, start from our app or contact our customer support; links in older messages do not work any more.",
        ),
        (Page::Gone, De) => t(
            "Dieser Link ist nicht mehr gültig",
            "Der Link ist abgelaufen oder wird nicht mehr benötigt. Falls Sie Ihre Identität noch bestätigen müssen, starten Sie in unserer App oder wenden Sie sich an unseren Kundenservice; Links aus älteren Nachrichten funktionieren nicht mehr.",
        ),
        (Page::Gone, Fr) => t(
            "Ce lien n’est plus valable",
            "Le lien a expiré ou n’est plus nécessaire. Si vous devez encore confirmer votre identité, passez par notre application ou contactez notre service client ; les liens des messages précédents ne fonctionnent plus.",
        ),
        (Page::Gone, Es) => t(
            "Este enlace ya no es válido",
            "El enlace ha caducado o ya no es necesario. Si todavía tiene que verificar su identidad, hágalo desde nuestra aplicación o póngase en contacto con nuestro servicio de atención al cliente; los enlaces de mensajes anteriores ya no funcionan.",
        ),
        (Page::Gone, It) => t(
            "Questo link non è più valido",
            "Il link è scaduto o non serve più. Se deve ancora verificare la sua identità, lo faccia dalla nostra app o contatti il nostro servizio clienti; i link dei messaggi precedenti non funzionano più.",
        ),
        (Page::Gone, Nl) => t(
            "Deze link is niet meer geldig",
            "De link is verlopen of niet meer nodig. Moet u uw identiteit nog verifiëren, start dan in onze app of neem contact op met onze klantenservice; links in oudere berichten werken niet meer.",
        ),
        (Page::Gone, Pt) => t(
            "Esta ligação já não é válida",
            "A ligação expirou ou já não é necessária. Se ainda precisar de confirmar a sua identidade, utilize a nossa aplicação ou contacte o nosso apoio ao cliente; as ligações de mensagens anteriores já não funcionam.",
        ),
        (Page::TooMany, En) => t("Too many attempts", "Please wait a minute and try again."),
        (Page::TooMany, De) => t("Zu viele Versuche", "Bitte warten Sie eine Minute und versuchen Sie es dann erneut."),
        (Page::TooMany, Fr) => t("Trop de tentatives", "Veuillez patienter une minute, puis réessayer."),
        (Page::TooMany, Es) => t("Demasiados intentos", "Espere un minuto y vuelva a intentarlo."),
        (Page::TooMany, It) => t("Troppi tentativi", "Attenda un minuto e riprovi."),
        (Page::TooMany, Nl) => t("Te veel pogingen", "Wacht een minuut en probeer het dan opnieuw."),
        (Page::TooMany, Pt) => t("Demasiadas tentativas", "Aguarde um minuto e tente novamente."),
        (Page::TryLater, En) => t(
            "Please try again shortly",
            "We could not open your verification page just now. Please try again in a few minutes.",
        ),
        (Page::TryLater, De) => t(
            "Bitte versuchen Sie es gleich noch einmal",
            "Wir konnten Ihre Verifizierungsseite gerade nicht öffnen. Bitte versuchen Sie es in ein paar Minuten erneut.",
        ),
        (Page::TryLater, Fr) => t(
            "Veuillez réessayer dans un instant",
            "Nous n’avons pas pu ouvrir votre page de vérification pour le moment. Veuillez réessayer dans quelques minutes.",
        ),
        (Page::TryLater, Es) => t(
            "Vuelva a intentarlo en breve",
            "No hemos podido abrir su página de verificación en este momento. Inténtelo de nuevo dentro de unos minutos.",
        ),
        (Page::TryLater, It) => {
            t("Riprovi tra poco", "Non siamo riusciti ad aprire la sua pagina di verifica. Riprovi tra qualche minuto.")
        }
        (Page::TryLater, Nl) => t(
            "Probeer het zo opnieuw",
            "We konden uw verificatiepagina nu niet openen. Probeer het over een paar minuten opnieuw.",
        ),
        (Page::TryLater, Pt) => t(
            "Tente novamente daqui a pouco",
            "Não foi possível abrir a sua página de verificação neste momento. Tente novamente dentro de alguns minutos.",
        ),
        (Page::Contact, En) => t(
            "Please contact us",
            "We cannot open a verification for this account from here. Please contact our customer support through our app or our website.",
        ),
        (Page::Contact, De) => t(
            "Bitte wenden Sie sich an uns",
            "Für dieses Konto können wir hier keine Verifizierung öffnen. Bitte wenden Sie sich über unsere App oder unsere Website an unseren Kundenservice.",
        ),
        (Page::Contact, Fr) => t(
            "Merci de nous contacter",
            "Nous ne pouvons pas ouvrir de vérification pour ce compte depuis cette page. Veuillez contacter notre service client depuis notre application ou notre site web.",
        ),
        (Page::Contact, Es) => t(
            "Póngase en contacto con nosotros",
            "Desde aquí no podemos abrir una verificación para esta cuenta. Póngase en contacto con nuestro servicio de atención al cliente a través de nuestra aplicación o de nuestra web.",
        ),
        (Page::Contact, It) => t(
            "La preghiamo di contattarci",
            "Da qui non possiamo avviare una verifica per questo conto. Contatti il nostro servizio clienti tramite la nostra app o il nostro sito web.",
        ),
        (Page::Contact, Nl) => t(
            "Neem contact met ons op",
            "Voor deze rekening kunnen we hier geen verificatie openen. Neem via onze app of onze website contact op met onze klantenservice.",
        ),
        (Page::Contact, Pt) => t(
            "Contacte-nos",
            "Não é possível abrir uma verificação para esta conta a partir daqui. Contacte o nosso apoio ao cliente através da nossa aplicação ou do nosso site.",
        ),
    }
}

/// Who reads a page: their language, and the regional variant when the pages have
/// one (the templates' `pt-BR`, `es-419`, `en-US`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    pub lang: Lang,
    pub variant: Option<Variant>,
}

/// A regional variant of a language's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Brazilian Portuguese (the language's pages are Portugal's).
    PtBr,
    /// Latin American Spanish, for `es-419` and the regions that fall to it.
    Es419,
    /// American English.
    EnUs,
}

impl Reader {
    /// A reader of English, with no variant.
    pub const EN: Reader = Reader { lang: Lang::En, variant: None };

    /// The reader of a link tagged `locale`: the language, and the variant its
    /// tag or its regional group names (`es-MX` → `es-419`).
    pub fn of(locale: Option<&str>) -> Reader {
        use crate::domain::locale::{normalize, regional_group};
        let lang = Lang::of(locale);
        let tag = locale.and_then(normalize);
        let group = tag.as_deref().and_then(regional_group);
        let variant = match (tag.as_deref(), group.as_deref()) {
            (Some("pt-BR"), _) => Some(Variant::PtBr),
            (Some("es-419"), _) | (_, Some("es-419")) => Some(Variant::Es419),
            (Some("en-US"), _) | (_, Some("en-US")) => Some(Variant::EnUs),
            _ => None,
        };
        Reader { lang, variant }
    }

    /// The `lang` attribute.
    pub fn code(self) -> &'static str {
        match self.variant {
            Some(Variant::PtBr) => "pt-BR",
            Some(Variant::Es419) => "es-419",
            Some(Variant::EnUs) => "en-US",
            None => self.lang.code(),
        }
    }
}

impl From<Lang> for Reader {
    fn from(lang: Lang) -> Self {
        Reader { lang, variant: None }
    }
}

/// A page's words where a regional variant writes them differently from its
/// language's pages; `None` where they are the same.
fn regional_text(page: &Page, variant: Variant) -> Option<Text> {
    use DeferReason::*;
    let t = |title, body| Some(Text { title, body });
    match (variant, page) {
        (Variant::PtBr, Page::Landing { .. }) => t(
            "Confirme sua identidade",
            "Toque no botão para abrir sua página de verificação segura. Leva cerca de cinco minutos; tenha seu documento de identidade em mãos.",
        ),
        (Variant::PtBr, Page::Verified) => {
            t("Sua identidade está verificada", "Sua identidade já foi confirmada. Você não precisa fazer mais nada.")
        }
        (Variant::PtBr, Page::Pending) => t(
            "Estamos analisando seus documentos",
            "Recebemos sua verificação e ela está em análise. Avisaremos você assim que for concluída.",
        ),
        (Variant::PtBr, Page::NotYet { why, .. }) => match why {
            Some(RejectionCooldown) => t(
                "Ainda não",
                "Sua última verificação não foi aceita. Por segurança, você só poderá iniciar uma nova após um período de espera.",
            ),
            Some(FailureCooldown) => t(
                "Ainda não",
                "Suas últimas tentativas não foram concluídas. Por segurança, aguarde um pouco antes de tentar de novo.",
            ),
            Some(DailyCap) => t("Limite diário atingido", "Você atingiu o número máximo de verificações por hoje."),
            Some(Concurrency) => t(
                "Ainda não",
                "Você já tem várias verificações abertas. Conclua uma delas ou aguarde até que uma expire.",
            ),
            None => t(
                "Ainda não",
                "Por segurança, não é possível abrir uma nova verificação agora. Tente de novo mais tarde.",
            ),
        },
        (Variant::PtBr, Page::OnItsWay) => t(
            "Sua página está abrindo",
            "Sua página de verificação já está abrindo. Se nada acontecer, aguarde meio minuto e toque no botão de novo.",
        ),
        (Variant::PtBr, Page::NotFound) => {
            t("Link não reconhecido", "Este link não é válido. Confira se você abriu o link completo da sua mensagem.")
        }
        (Variant::PtBr, Page::Gone) => t(
            "Este link não é mais válido",
            "O link expirou ou não é mais necessário. Se você ainda precisar confirmar sua identidade, use nosso aplicativo ou fale com nosso atendimento; os links de mensagens anteriores não funcionam mais.",
        ),
        (Variant::PtBr, Page::TooMany) => t("Muitas tentativas", "Aguarde um minuto e tente de novo."),
        (Variant::PtBr, Page::TryLater) => t(
            "Tente de novo em instantes",
            "Não foi possível abrir sua página de verificação agora. Tente de novo em alguns minutos.",
        ),
        (Variant::PtBr, Page::Contact) => t(
            "Fale conosco",
            "Não é possível abrir uma verificação para esta conta por aqui. Fale com nosso atendimento pelo aplicativo ou pelo site.",
        ),
        (Variant::Es419, Page::Landing { .. }) => t(
            "Verifique su identidad",
            "Presione el botón para abrir su página de verificación segura. Le tomará unos cinco minutos; tenga a mano su documento de identidad.",
        ),
        (Variant::Es419, Page::OnItsWay) => t(
            "Su página se está abriendo",
            "Su página de verificación ya se está abriendo. Si no pasa nada, espere medio minuto y vuelva a presionar el botón.",
        ),
        (Variant::Es419, Page::Gone) => t(
            "Este enlace ya no es válido",
            "El enlace venció o ya no es necesario. Si todavía tiene que verificar su identidad, hágalo desde nuestra app o comuníquese con nuestro servicio de atención al cliente; los enlaces de mensajes anteriores ya no funcionan.",
        ),
        (Variant::Es419, Page::NotYet { why: Some(Concurrency), .. }) => t(
            "Todavía no",
            "Ya tiene varias verificaciones abiertas. Termine una de ellas o espere a que venza alguna.",
        ),
        (Variant::Es419, Page::TryLater) => t(
            "Vuelva a intentarlo en breve",
            "No pudimos abrir su página de verificación en este momento. Inténtelo de nuevo en unos minutos.",
        ),
        (Variant::Es419, Page::Contact) => t(
            "Comuníquese con nosotros",
            "Desde aquí no podemos abrir una verificación para esta cuenta. Comuníquese con nuestro servicio de atención al cliente a través de nuestra app o de nuestro sitio web.",
        ),
        (Variant::EnUs, Page::NotFound) => {
            t("Link not recognized", "This link is not valid. Check that you opened the whole link from your message.")
        }
        _ => None,
    }
}

/// The title and the text of a limit's page: which limit, in `lang`.
fn not_yet(why: Option<DeferReason>, lang: Lang) -> Text {
    use DeferReason::*;
    use Lang::*;
    let t = |title, body| Text { title, body };
    match (why, lang) {
        (Some(RejectionCooldown), En) => t(
            "Not just yet",
            "Your last verification was not accepted. For your security, a new one can start only after a waiting period.",
        ),
        (Some(RejectionCooldown), De) => t(
            "Noch nicht möglich",
            "Ihre letzte Verifizierung wurde nicht akzeptiert. Zu Ihrer Sicherheit ist eine neue erst nach einer Wartezeit möglich.",
        ),
        (Some(RejectionCooldown), Fr) => t(
            "Pas tout de suite",
            "Votre dernière vérification n’a pas été acceptée. Pour votre sécurité, une nouvelle vérification n’est possible qu’après un délai d’attente.",
        ),
        (Some(RejectionCooldown), Es) => t(
            "Todavía no",
            "Su última verificación no fue aceptada. Por su seguridad, solo podrá iniciar una nueva tras un periodo de espera.",
        ),
        (Some(RejectionCooldown), It) => t(
            "Non ancora",
            "La sua ultima verifica non è stata accettata. Per la sua sicurezza, potrà avviarne una nuova solo dopo un periodo di attesa.",
        ),
        (Some(RejectionCooldown), Nl) => t(
            "Nog even geduld",
            "Uw laatste verificatie is niet geaccepteerd. Voor uw veiligheid kunt u pas na een wachttijd een nieuwe starten.",
        ),
        (Some(RejectionCooldown), Pt) => t(
            "Ainda não",
            "A sua última verificação não foi aceite. Por segurança, só poderá iniciar uma nova após um período de espera.",
        ),
        (Some(FailureCooldown), En) => t(
            "Not just yet",
            "Your last attempts did not go through. For your security, please wait a little before you try again.",
        ),
        (Some(FailureCooldown), De) => t(
            "Noch nicht möglich",
            "Ihre letzten Versuche sind nicht gelungen. Zu Ihrer Sicherheit warten Sie bitte etwas, bevor Sie es erneut versuchen.",
        ),
        (Some(FailureCooldown), Fr) => t(
            "Pas tout de suite",
            "Vos dernières tentatives n’ont pas abouti. Pour votre sécurité, patientez un peu avant de réessayer.",
        ),
        (Some(FailureCooldown), Es) => t(
            "Todavía no",
            "Sus últimos intentos no se completaron. Por su seguridad, espere un poco antes de volver a intentarlo.",
        ),
        (Some(FailureCooldown), It) => t(
            "Non ancora",
            "Gli ultimi tentativi non sono andati a buon fine. Per la sua sicurezza, attenda un po’ prima di riprovare.",
        ),
        (Some(FailureCooldown), Nl) => t(
            "Nog even geduld",
            "Uw laatste pogingen zijn niet gelukt. Wacht voor uw veiligheid even voordat u het opnieuw probeert.",
        ),
        (Some(FailureCooldown), Pt) => t(
            "Ainda não",
            "As suas últimas tentativas não foram concluídas. Por segurança, aguarde um pouco antes de tentar novamente.",
        ),
        (Some(DailyCap), En) => {
            t("Today's limit is reached", "You have reached today's limit of verification attempts.")
        }
        (Some(DailyCap), De) => {
            t("Tageslimit erreicht", "Sie haben die Höchstzahl an Verifizierungen für heute erreicht.")
        }
        (Some(DailyCap), Fr) => {
            t("Limite du jour atteinte", "Vous avez atteint le nombre maximal de vérifications pour aujourd’hui.")
        }
        (Some(DailyCap), Es) => {
            t("Límite diario alcanzado", "Ha alcanzado el número máximo de verificaciones por hoy.")
        }
        (Some(DailyCap), It) => {
            t("Limite giornaliero raggiunto", "Ha raggiunto il numero massimo di verifiche per oggi.")
        }
        (Some(DailyCap), Nl) => t("Daglimiet bereikt", "U hebt het maximale aantal verificaties voor vandaag bereikt."),
        (Some(DailyCap), Pt) => t("Limite diário atingido", "Atingiu o número máximo de verificações por hoje."),
        (Some(Concurrency), En) => t(
            "Not just yet",
            "You already have several verifications open. Finish one of them, or wait until one expires.",
        ),
        (Some(Concurrency), De) => t(
            "Noch nicht möglich",
            "Sie haben bereits mehrere Verifizierungen geöffnet. Schließen Sie eine davon ab oder warten Sie, bis eine abläuft.",
        ),
        (Some(Concurrency), Fr) => t(
            "Pas tout de suite",
            "Plusieurs vérifications sont déjà ouvertes à votre nom. Terminez-en une ou attendez que l’une d’elles expire.",
        ),
        (Some(Concurrency), Es) => t(
            "Todavía no",
            "Ya tiene varias verificaciones abiertas. Termine una de ellas o espere a que caduque alguna.",
        ),
        (Some(Concurrency), It) => {
            t("Non ancora", "Ha già diverse verifiche aperte. Ne completi una oppure attenda che una scada.")
        }
        (Some(Concurrency), Nl) => t(
            "Nog even geduld",
            "U hebt al meerdere verificaties openstaan. Rond er een af of wacht tot er een verloopt.",
        ),
        (Some(Concurrency), Pt) => {
            t("Ainda não", "Já tem várias verificações abertas. Conclua uma delas ou aguarde até que uma expire.")
        }
        (None, En) => t(
            "Not just yet",
            "For your security, a new verification cannot be opened right now. Please try again later.",
        ),
        (None, De) => t(
            "Noch nicht möglich",
            "Zu Ihrer Sicherheit kann gerade keine neue Verifizierung geöffnet werden. Bitte versuchen Sie es später erneut.",
        ),
        (None, Fr) => t(
            "Pas tout de suite",
            "Pour votre sécurité, aucune nouvelle vérification ne peut être ouverte pour le moment. Veuillez réessayer plus tard.",
        ),
        (None, Es) => t(
            "Todavía no",
            "Por su seguridad, ahora mismo no se puede abrir una nueva verificación. Inténtelo de nuevo más tarde.",
        ),
        (None, It) => t(
            "Non ancora",
            "Per la sua sicurezza, al momento non è possibile aprire una nuova verifica. Riprovi più tardi.",
        ),
        (None, Nl) => t(
            "Nog even geduld",
            "Voor uw veiligheid kan er nu geen nieuwe verificatie worden geopend. Probeer het later opnieuw.",
        ),
        (None, Pt) => t(
            "Ainda não",
            "Por segurança, não é possível abrir uma nova verificação neste momento. Tente novamente mais tarde.",
        ),
    }
}

/// "You can try again from", before a time: `tomorrow` says so.
fn retry_from(lang: Lang, tomorrow: bool) -> &'static str {
    match (lang, tomorrow) {
        (Lang::En, false) => "You can try again from",
        (Lang::En, true) => "You can try again tomorrow, from",
        (Lang::De, false) => "Sie können es erneut versuchen ab",
        (Lang::De, true) => "Sie können es morgen erneut versuchen, ab",
        (Lang::Fr, false) => "Vous pourrez réessayer à partir du",
        (Lang::Fr, true) => "Vous pourrez réessayer demain, à partir du",
        (Lang::Es, false) => "Podrá volver a intentarlo a partir del",
        (Lang::Es, true) => "Podrá volver a intentarlo mañana, a partir del",
        (Lang::It, false) => "Potrà riprovare a partire da",
        (Lang::It, true) => "Potrà riprovare domani, a partire da",
        (Lang::Nl, false) => "U kunt het opnieuw proberen vanaf",
        (Lang::Nl, true) => "U kunt het morgen opnieuw proberen, vanaf",
        (Lang::Pt, false) => "Poderá tentar novamente a partir de",
        (Lang::Pt, true) => "Poderá tentar novamente amanhã, a partir de",
    }
}

/// The button, and the words before the link's expiry.
fn extras(lang: Lang) -> (&'static str, &'static str) {
    match lang {
        Lang::En => ("Continue to verification", "This link works until"),
        Lang::De => ("Weiter zur Verifizierung", "Dieser Link gilt bis"),
        Lang::Fr => ("Continuer vers la vérification", "Ce lien est valable jusqu’au"),
        Lang::Es => ("Continuar con la verificación", "Este enlace es válido hasta el"),
        Lang::It => ("Prosegua con la verifica", "Questo link è valido fino a"),
        Lang::Nl => ("Verder naar verificatie", "Deze link werkt tot"),
        Lang::Pt => ("Continuar para a verificação", "Esta ligação é válida até"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
background:#f4f6f8;color:#1b1f24}main{max-width:34rem;margin:0 auto;padding:2rem 1.25rem}\
.card{background:#fff;border-radius:12px;padding:1.75rem 1.5rem;box-shadow:0 1px 3px rgba(0,0,0,.12)}\
h1{font-size:1.5rem;line-height:1.25;margin:0 0 1rem}p{margin:0 0 1rem}\
button{display:block;width:100%;min-height:48px;margin:1.5rem 0 .5rem;border:0;border-radius:8px;\
background:#0b5fff;color:#fff;font:600 1.05rem system-ui,sans-serif;cursor:pointer}\
button:focus-visible{outline:3px solid #1b1f24;outline-offset:2px}.note{color:#4a5561;font-size:.95rem}\
.card>:last-child{margin-bottom:0}@media (min-width:48rem){main{padding-top:4rem}}";

impl Page {
    /// The whole HTML document.
    pub fn render(&self, reader: impl Into<Reader>) -> String {
        let reader: Reader = reader.into();
        let lang = reader.lang;
        let t = reader.variant.and_then(|v| regional_text(self, v)).unwrap_or_else(|| text(self, lang));
        let (button, until) = match reader.variant {
            Some(Variant::PtBr) => ("Continuar para a verificação", "Este link vale até"),
            _ => extras(lang),
        };
        let mut inner = format!("<h1>{}</h1>\n<p>{}</p>\n", escape(t.title), escape(t.body));
        match self {
            Page::Landing { expires } => {
                inner.push_str(&format!(
                    "<form method=\"post\"><button type=\"submit\">{}</button></form>\n",
                    escape(button)
                ));
                if let Some(e) = expires {
                    inner.push_str(&format!("<p class=\"note\">{} {}.</p>\n", escape(until), escape(e)));
                }
            }
            Page::NotYet { at: Some(at), tomorrow, .. } => {
                let from = match (reader.variant, *tomorrow) {
                    (Some(Variant::PtBr), false) => "Você poderá tentar de novo a partir de",
                    (Some(Variant::PtBr), true) => "Você poderá tentar de novo amanhã, a partir de",
                    _ => retry_from(lang, *tomorrow),
                };
                inner.push_str(&format!("<p><strong>{} {}.</strong></p>\n", escape(from), escape(at)));
            }
            Page::OnItsWay => {
                inner.push_str(&format!(
                    "<form method=\"post\"><button type=\"submit\">{}</button></form>\n",
                    escape(button)
                ));
            }
            _ => {}
        }
        format!(
            "<!doctype html>\n<html lang=\"{code}\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"robots\" content=\"noindex, nofollow\">\n<title>{title}</title>\n\
             <style>{STYLE}</style>\n</head>\n<body>\n<main>\n<div class=\"card\">\n{inner}</div>\n</main>\n</body>\n</html>\n",
            code = reader.code(),
            title = escape(t.title),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn languages_fall_back_to_english() {
        assert_eq!(Lang::of(Some("de-AT")), Lang::De);
        assert_eq!(Lang::of(Some("pt_BR")), Lang::Pt);
        assert_eq!(Lang::of(Some("xx-YY")), Lang::En);
        assert_eq!(Lang::of(None), Lang::En);
    }

    #[test]
    fn dates_are_in_the_users_zone_and_language_as_the_email_writes_them() {
        let at = Utc.with_ymd_and_hms(2026, 3, 29, 8, 30, 0).unwrap();
        assert_eq!(when(at, Some("Europe/Berlin"), Lang::De).unwrap(), "Sonntag, 29. März 2026 um 10:30 MESZ");
        assert_eq!(
            when(at, Some("America/New_York"), Reader::of(Some("en-US"))).unwrap(),
            "Sunday, March 29, 2026 at 4:30\u{202f}AM EDT"
        );
        assert_eq!(when(at, Some("Europe/London"), Lang::En).unwrap(), "Sunday, 29 March 2026 at 09:30 BST");
        assert_eq!(when(at, Some("not/a-zone"), Lang::Es).unwrap(), "domingo, 29 de marzo de 2026 a las 08:30 UTC");
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            when(at, Some("Europe/Berlin"), Lang::De).unwrap(),
            crate::domain::locale::format_datetime_in(at, berlin, "de-DE"),
            "one spelling of one instant"
        );
        // 23:30 in London is already the next day in Berlin
        let late = Utc.with_ymd_and_hms(2026, 3, 29, 22, 30, 0).unwrap();
        assert!(is_another_day(late - chrono::Duration::hours(1), late, Some("Europe/Berlin")));
        assert!(!is_another_day(late - chrono::Duration::hours(1), late, Some("Europe/London")));
    }

    #[test]
    fn every_page_of_a_known_link_is_in_its_language_and_true_to_the_reason() {
        for lang in [Lang::De, Lang::Fr, Lang::Es, Lang::It, Lang::Nl, Lang::Pt] {
            for page in [Page::TooMany, Page::Contact, Page::Gone] {
                let html = page.render(lang);
                assert!(html.contains(&format!("<html lang=\"{}\">", lang.code())), "{html}");
                assert_ne!(text(&page, lang).title, text(&page, Lang::En).title, "{page:?} in {lang:?}");
            }
        }
        let de = Page::TooMany.render(Lang::De);
        assert!(de.contains("Zu viele Versuche"), "{de}");
        // a rejection cooldown is no "you started several verifications"
        let cooldown =
            Page::NotYet { at: Some("x".into()), why: Some(DeferReason::RejectionCooldown), tomorrow: false };
        let html = cooldown.render(Lang::En);
        assert!(html.contains("not accepted") && !html.contains("several"), "{html}");
        assert!(html.contains("You can try again from x."), "{html}");
        let cap = Page::NotYet { at: Some("y".into()), why: Some(DeferReason::DailyCap), tomorrow: true };
        assert!(cap.render(Lang::En).contains("tomorrow"), "{}", cap.render(Lang::En));
        assert!(cap.render(Lang::Fr).contains("demain"));
        // regional variants: Brazilian Portuguese of its own, Latin American Spanish
        let br = Page::Gone.render(Reader::of(Some("pt-BR")));
        assert!(br.contains("<html lang=\"pt-BR\">") && br.contains("Este link não é mais válido"), "{br}");
        assert!(!br.contains("ligação"), "{br}");
        let pt = Page::Gone.render(Reader::of(Some("pt-PT")));
        assert!(pt.contains("<html lang=\"pt\">") && pt.contains("ligação"), "{pt}");
        let mx = Page::Gone.render(Reader::of(Some("es-MX")));
        assert!(mx.contains("lang=\"es-419\"") && mx.contains("venció"), "{mx}");
        let us = Page::NotFound.render(Reader::of(Some("en-US")));
        assert!(us.contains("Link not recognized"), "{us}");
        // an expired link promises no new message; contact asks for no reply
        let gone = Page::Gone.render(Lang::En);
        assert!(!gone.contains("you will receive"), "{gone}");
        let contact = Page::Contact.render(Lang::En);
        assert!(!contact.contains("reply"), "{contact}");
    }

    #[test]
    fn pages_are_self_contained_and_escape_what_they_show() {
        for lang in [Lang::En, Lang::De, Lang::Fr, Lang::Es, Lang::It, Lang::Nl, Lang::Pt] {
            for page in [
                Page::Landing { expires: Some("<b>".into()) },
                Page::Verified,
                Page::Pending,
                Page::NotYet { at: Some("x".into()), why: None, tomorrow: false },
                Page::NotYet { at: Some("x".into()), why: Some(DeferReason::Concurrency), tomorrow: true },
                Page::TooMany,
                Page::Contact,
                Page::OnItsWay,
                Page::Gone,
                Page::TryLater,
            ] {
                let html = page.render(lang);
                assert!(html.contains(&format!("<html lang=\"{}\">", lang.code())), "{html}");
                assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"), "{html}");
                assert!(!html.contains("<b>"), "not escaped: {html}");
            }
        }
        assert!(Page::Landing { expires: None }.render(Lang::En).contains("Continue to verification"));
    }
}
