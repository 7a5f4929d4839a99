//! The click pages: small, self-contained HTML (inline CSS, no script, nothing
//! loaded from elsewhere), readable on a phone, in the user's language when a
//! translation exists (English otherwise), with dates in the user's time zone.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

pub use crate::domain::locale::Lang;

/// `13 December 2026, 09:30 (Europe/Berlin)` in the user's zone and language; UTC
/// when the zone is unknown.
pub fn when(at: DateTime<Utc>, zone: Option<&str>, lang: Lang) -> Option<String> {
    let tz: Tz = zone.and_then(|z| z.trim().parse().ok()).unwrap_or(Tz::UTC);
    let local = at.with_timezone(&tz);
    let month = lang.months()[local.month0() as usize];
    let date = match lang {
        Lang::En => format!("{} {month} {}", local.day(), local.year()),
        Lang::De => format!("{}. {month} {}", local.day(), local.year()),
        Lang::Fr | Lang::It | Lang::Nl => format!("{} {month} {}", local.day(), local.year()),
        Lang::Es | Lang::Pt => format!("{} de {month} de {}", local.day(), local.year()),
    };
    Some(format!("{date}, {:02}:{:02} ({})", local.hour(), local.minute(), tz.name()))
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
    /// A limit holds until then (unknown when the API said so).
    NotYet { at: Option<String> },
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
            "Bevestig uw identiteit",
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
            t("Sie sind verifiziert", "Ihre Identität ist bereits bestätigt. Sie müssen nichts weiter tun.")
        }
        (Page::Verified, Fr) => {
            t("Vous êtes vérifié", "Votre identité est déjà confirmée. Vous n’avez rien d’autre à faire.")
        }
        (Page::Verified, Es) => {
            t("Ya está verificado", "Su identidad ya está confirmada. No tiene que hacer nada más.")
        }
        (Page::Verified, It) => t("Verifica completata", "La sua identità è già confermata. Non deve fare altro."),
        (Page::Verified, Nl) => {
            t("U bent geverifieerd", "Uw identiteit is al bevestigd. U hoeft verder niets te doen.")
        }
        (Page::Verified, Pt) => {
            t("Já está verificado", "A sua identidade já está confirmada. Não precisa de fazer mais nada.")
        }
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
        (Page::NotYet { .. }, En) => t(
            "Not just yet",
            "You have started several verifications recently. For your security, a new one can be opened a little later.",
        ),
        (Page::NotYet { .. }, De) => t(
            "Noch nicht ganz",
            "Sie haben kürzlich mehrere Verifizierungen begonnen. Zu Ihrer Sicherheit kann eine neue erst etwas später geöffnet werden.",
        ),
        (Page::NotYet { .. }, Fr) => t(
            "Pas tout de suite",
            "Vous avez commencé plusieurs vérifications récemment. Pour votre sécurité, une nouvelle pourra être ouverte un peu plus tard.",
        ),
        (Page::NotYet { .. }, Es) => t(
            "Todavía no",
            "Ha iniciado varias verificaciones hace poco. Por su seguridad, podrá abrir una nueva un poco más tarde.",
        ),
        (Page::NotYet { .. }, It) => t(
            "Non ancora",
            "Ha avviato diverse verifiche di recente. Per la sua sicurezza, potrà aprirne una nuova un po’ più tardi.",
        ),
        (Page::NotYet { .. }, Nl) => t(
            "Nog even geduld",
            "U bent onlangs meerdere verificaties gestart. Voor uw veiligheid kunt u iets later een nieuwe openen.",
        ),
        (Page::NotYet { .. }, Pt) => t(
            "Ainda não",
            "Iniciou várias verificações recentemente. Por segurança, poderá abrir uma nova um pouco mais tarde.",
        ),
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
        (Page::NotFound, _) => {
            t("Link not recognised", "This link is not valid. Check that you opened the whole link from your message.")
        }
        (Page::Gone, En) => t(
            "This link is no longer valid",
            "The link has expired or is no longer needed. If you still need to verify, you will receive a new message.",
        ),
        (Page::Gone, De) => t(
            "Dieser Link ist nicht mehr gültig",
            "Der Link ist abgelaufen oder wird nicht mehr benötigt. Falls Sie sich noch verifizieren müssen, erhalten Sie eine neue Nachricht.",
        ),
        (Page::Gone, Fr) => t(
            "Ce lien n’est plus valable",
            "Le lien a expiré ou n’est plus nécessaire. Si vous devez encore vous vérifier, vous recevrez un nouveau message.",
        ),
        (Page::Gone, Es) => t(
            "Este enlace ya no es válido",
            "El enlace ha caducado o ya no es necesario. Si todavía tiene que verificarse, recibirá un nuevo mensaje.",
        ),
        (Page::Gone, It) => t(
            "Questo link non è più valido",
            "Il link è scaduto o non serve più. Se deve ancora verificarsi, riceverà un nuovo messaggio.",
        ),
        (Page::Gone, Nl) => t(
            "Deze link is niet meer geldig",
            "De link is verlopen of niet meer nodig. Moet u zich nog verifiëren, dan ontvangt u een nieuw bericht.",
        ),
        (Page::Gone, Pt) => t(
            "Esta ligação já não é válida",
            "A ligação expirou ou já não é necessária. Se ainda precisar de se verificar, receberá uma nova mensagem.",
        ),
        (Page::TooMany, _) => t("Too many attempts", "Please wait a minute and try again."),
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
        (Page::Contact, _) => t(
            "Please contact us",
            "We cannot open a verification for this account from here. Please reply to our message or contact support.",
        ),
    }
}

/// The words around a time, and the button.
fn extras(lang: Lang) -> (&'static str, &'static str, &'static str) {
    // (button, "works until", "available from")
    match lang {
        Lang::En => ("Continue to verification", "This link works until", "You can start a new verification from"),
        Lang::De => ("Weiter zur Verifizierung", "Dieser Link gilt bis", "Eine neue Verifizierung ist möglich ab"),
        Lang::Fr => (
            "Continuer vers la vérification",
            "Ce lien est valable jusqu’au",
            "Vous pourrez commencer une nouvelle vérification à partir du",
        ),
        Lang::Es => (
            "Continuar con la verificación",
            "Este enlace es válido hasta el",
            "Podrá iniciar una nueva verificación a partir del",
        ),
        Lang::It => {
            ("Continua con la verifica", "Questo link è valido fino al", "Potrà avviare una nuova verifica dal")
        }
        Lang::Nl => ("Verder naar verificatie", "Deze link werkt tot", "U kunt een nieuwe verificatie starten vanaf"),
        Lang::Pt => (
            "Continuar para a verificação",
            "Esta ligação é válida até",
            "Poderá iniciar uma nova verificação a partir de",
        ),
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
    pub fn render(&self, lang: Lang) -> String {
        // the not-found page has no user to take a language from
        let lang = if matches!(self, Page::NotFound | Page::TooMany | Page::Contact) { Lang::En } else { lang };
        let t = text(self, lang);
        let (button, until, from) = extras(lang);
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
            Page::NotYet { at: Some(at) } => {
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
            code = lang.code(),
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
    fn dates_are_in_the_users_zone_and_language() {
        let at = Utc.with_ymd_and_hms(2026, 3, 29, 8, 30, 0).unwrap();
        assert_eq!(when(at, Some("Europe/Berlin"), Lang::De).unwrap(), "29. März 2026, 10:30 (Europe/Berlin)");
        assert_eq!(when(at, Some("Europe/London"), Lang::En).unwrap(), "29 March 2026, 09:30 (Europe/London)");
        assert_eq!(when(at, Some("not/a-zone"), Lang::Es).unwrap(), "29 de marzo de 2026, 08:30 (UTC)");
        assert_eq!(when(at, Some("Europe/Amsterdam"), Lang::Nl).unwrap(), "29 maart 2026, 10:30 (Europe/Amsterdam)");
    }

    #[test]
    fn pages_are_self_contained_and_escape_what_they_show() {
        for lang in [Lang::En, Lang::De, Lang::Fr, Lang::Es, Lang::It, Lang::Nl, Lang::Pt] {
            for page in [
                Page::Landing { expires: Some("<b>".into()) },
                Page::Verified,
                Page::Pending,
                Page::NotYet { at: Some("x".into()) },
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
