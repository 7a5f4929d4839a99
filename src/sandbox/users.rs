//! The sandbox's users: generated from a seed, or loaded from an import file, plus the
//! fake profile details (`GET /v1/user`) derived from each user's id.
//!
//! Generation is deterministic: the same seed, count and start instant give the same
//! users, ids and refresh tokens, so a demo can be reproduced and an export re-loaded.

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;

use super::rng::{Rng, mix};
use super::userfile::UserRecord;
use crate::domain::{EmailAddress, Region, UserId, VerificationState};

const FIRST: [&str; 16] = [
    "Ada", "Ben", "Chloe", "Dev", "Elif", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena", "Marta", "Noor",
    "Oscar", "Priya",
];
const LAST: [&str; 16] = [
    "Adeyemi", "Brennan", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Kowalski",
    "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov",
];
/// (country, locale, time zone) for international users.
const INTL: [(&str, &str, &str); 10] = [
    ("GB", "en-GB", "Europe/London"),
    ("DE", "de-DE", "Europe/Berlin"),
    ("FR", "fr-FR", "Europe/Paris"),
    ("ES", "es-ES", "Europe/Madrid"),
    ("IT", "it-IT", "Europe/Rome"),
    ("NL", "nl-NL", "Europe/Amsterdam"),
    ("IE", "en-IE", "Europe/Dublin"),
    ("PT", "pt-PT", "Europe/Lisbon"),
    ("BR", "pt-BR", "America/Sao_Paulo"),
    ("SG", "en-SG", "Asia/Singapore"),
];
/// (US state, locale, time zone) for US users.
const US: [(&str, &str, &str); 5] = [
    ("NY", "en-US", "America/New_York"),
    ("CA", "en-US", "America/Los_Angeles"),
    ("TX", "es-US", "America/Chicago"),
    ("IL", "en-US", "America/Chicago"),
    ("CO", "en-US", "America/Denver"),
];
const TAGS: [&str; 6] = ["vip", "card-holder", "legacy", "high-risk", "beta", "dormant"];
const CITIES: [&str; 8] =
    ["Springfield", "Riverton", "Lakeside", "Fairview", "Oakdale", "Hillcrest", "Bayview", "Elmwood"];
const STREETS: [&str; 6] = ["High Street", "Station Road", "Main Street", "Park Lane", "Mill Road", "Church Street"];

/// `n` users from `seed`: about 55 % UNVERIFIED, 20 % REJECTED (rejected within the 48 h
/// before `now`), 10 % PENDING, 15 % VERIFIED; about 30 % in region `us`. User `i` has
/// the address `user{i}@example.test`, counting from 1.
pub fn generate(n: usize, seed: u64, now: DateTime<Utc>) -> Vec<UserRecord> {
    let mut rng = Rng::new(seed, 0x05E5);
    // whole seconds, so that an export written as RFC 3339 reads back identical
    let now = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    (1..=n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
            id[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
            let user_id = UserId::parse(&uuid::Builder::from_random_bytes(id).into_uuid().to_string())
                .expect("a generated UUID parses");
            let state_roll = rng.below(100);
            let verification_state = match state_roll {
                0..55 => VerificationState::Unverified,
                55..75 => VerificationState::Rejected,
                75..85 => VerificationState::Pending,
                _ => VerificationState::Verified,
            };
            let rejected_at = (verification_state == VerificationState::Rejected)
                .then(|| now - Duration::seconds(rng.below(48 * 3600) as i64 + 1));
            let region = if rng.below(100) < 30 { Region::Us } else { Region::Intl };
            let (country, locale, timezone) = match region {
                Region::Us => {
                    let (_, locale, tz) = *rng.pick(&US);
                    ("US", locale, tz)
                }
                Region::Intl => *rng.pick(&INTL),
            };
            let tags: Vec<String> = TAGS.iter().filter(|_| rng.below(100) < 15).map(|t| (*t).to_owned()).collect();
            UserRecord {
                user_id,
                email: EmailAddress::parse(&format!("user{i}@example.test")).expect("a generated address parses"),
                first_name: (*rng.pick(&FIRST)).to_owned(),
                last_name: (*rng.pick(&LAST)).to_owned(),
                locale: locale.to_owned(),
                timezone: timezone.to_owned(),
                region,
                country: country.to_owned(),
                verification_state,
                rejected_at,
                refresh_token: Some(format!("rt_{}", rng.hex(24))),
                tags,
            }
        })
        .collect()
}

/// `n` users as [`generate`] makes them, but every one UNVERIFIED and never rejected:
/// a benchmark wants a campaign in which every user is eligible, so that its figure
/// counts sessions and messages, not skips.
pub fn generate_unverified(n: usize, seed: u64, now: DateTime<Utc>) -> Vec<UserRecord> {
    let mut records = generate(n, seed, now);
    for r in &mut records {
        r.verification_state = VerificationState::Unverified;
        r.rejected_at = None;
    }
    records
}

/// A refresh token for a loaded user that has none, stable for (seed, user).
pub fn default_refresh_token(seed: u64, user: &UserId) -> String {
    let h = user.as_str().bytes().fold(mix(seed), |h, b| mix(h ^ u64::from(b)));
    format!("rt_{}", Rng::new(h, 0x70C).hex(24))
}

/// The body of `GET /v1/user`, with Baanx's camelCase names. The address, birth date
/// and SSN are fake, derived from the user id, for realism only.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    pub date_of_birth: String,
    pub email: String,
    pub verification_state: VerificationState,
    pub phone_number: String,
    pub phone_country_code: String,
    pub address_line1: String,
    pub address_line2: Option<String>,
    pub city: String,
    pub zip: String,
    pub country_of_residence: String,
    pub country_of_nationality: String,
    pub us_state: Option<String>,
    pub ssn: Option<String>,
    pub created_at: String,
}

/// The parts of a profile that never change; the state is filled in per request.
pub fn profile(u: &UserRecord, state: VerificationState) -> Profile {
    let h = u.user_id.as_str().bytes().fold(0xB7u64, |h, b| mix(h ^ u64::from(b)));
    let mut rng = Rng::new(h, 0x9F);
    let birth = NaiveDate::from_ymd_opt(1950, 1, 1).expect("valid date") + Duration::days(rng.below(50 * 365) as i64);
    let created = DateTime::from_timestamp(1_600_000_000 + rng.below(150_000_000) as i64, 0).unwrap_or_default();
    let country = if u.country.is_empty() {
        match u.region {
            Region::Us => "US".to_owned(),
            Region::Intl => "GB".to_owned(),
        }
    } else {
        u.country.clone()
    };
    let (us_state, ssn, code) = match u.region {
        Region::Us => {
            let state = US.iter().map(|(s, _, _)| *s).nth(rng.below(US.len() as u64) as usize).unwrap_or("NY");
            let ssn = format!("9{:02}-{:02}-{:04}", rng.below(100), rng.below(100), rng.below(10_000));
            (Some(state.to_owned()), Some(ssn), "+1")
        }
        Region::Intl => (None, None, "+44"),
    };
    Profile {
        id: u.user_id.to_string(),
        first_name: u.first_name.clone(),
        last_name: u.last_name.clone(),
        date_of_birth: birth.format("%Y-%m-%d").to_string(),
        email: u.email.to_string(),
        verification_state: state,
        phone_number: format!("7{:09}", rng.below(1_000_000_000)),
        phone_country_code: code.to_owned(),
        address_line1: format!("{} {}", 1 + rng.below(200), rng.pick(&STREETS)),
        address_line2: (rng.below(4) == 0).then(|| format!("Flat {}", 1 + rng.below(40))),
        city: (*rng.pick(&CITIES)).to_owned(),
        zip: format!("{:05}", rng.below(100_000)),
        country_of_nationality: country.clone(),
        country_of_residence: country,
        us_state,
        ssn,
        created_at: created.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn deterministic_and_mixed() {
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let a = generate(400, 42, now);
        let b = generate(400, 42, now);
        let c = generate(400, 43, now);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a[0].email.as_str(), "user1@example.test");
        for s in VerificationState::ALL {
            assert!(a.iter().any(|u| u.verification_state == s), "{s} missing");
        }
        assert!(a.iter().any(|u| u.region == Region::Us) && a.iter().any(|u| u.region == Region::Intl));
        for u in a.iter().filter(|u| u.verification_state == VerificationState::Rejected) {
            let at = u.rejected_at.unwrap();
            assert!(at < now && at >= now - Duration::hours(48));
        }
        // both sides of the 24 h rejection cooldown occur
        let rejected: Vec<_> = a.iter().filter_map(|u| u.rejected_at).collect();
        assert!(rejected.iter().any(|t| *t > now - Duration::hours(24)));
        assert!(rejected.iter().any(|t| *t <= now - Duration::hours(24)));
        let ids: std::collections::HashSet<_> = a.iter().map(|u| u.user_id.clone()).collect();
        assert_eq!(ids.len(), a.len());
        let p = profile(&a[0], a[0].verification_state);
        assert_eq!(p.id, a[0].user_id.as_str());
        assert_eq!(p.ssn.is_some(), a[0].region == Region::Us);
    }

    #[test]
    fn unverified_generation_keeps_the_users_and_makes_all_eligible() {
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let mixed = generate(300, 7, now);
        let all = generate_unverified(300, 7, now);
        assert!(all.iter().all(|u| u.verification_state == VerificationState::Unverified && u.rejected_at.is_none()));
        let ids = |v: &[UserRecord]| v.iter().map(|u| u.user_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&all), ids(&mixed), "the same users, only their state differs");
    }
}
