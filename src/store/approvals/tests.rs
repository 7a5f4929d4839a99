//! Approvals and applied versions on both engines.

use super::*;
use crate::both_engines;
use crate::domain::CampaignSpec;
use crate::store::testing::TestDb;

const SPEC: &str = "name = \"kyc\"\n[audience]\nstates = [\"UNVERIFIED\"]\n";

fn tpl(text: &str) -> Vec<TemplateVersion> {
    let files: BTreeMap<String, String> = [("body.txt".to_owned(), text.to_owned())].into();
    vec![TemplateVersion { digest: hex::encode(Sha256::digest(text.as_bytes())), name: "default".into(), files }]
}

both_engines!(four_eyes_and_a_new_version_needs_a_new_approval, |db: TestDb| async move {
    let s = &db.store;
    let now = Utc::now();
    let spec = CampaignSpec::from_toml(SPEC, "t").unwrap();
    let (_, c) = s.campaign_apply(&spec, SPEC, "alice", now).await.unwrap();
    let plan: BTreeMap<String, i64> = [("target".to_owned(), 3), ("not_matching_states".to_owned(), 2)].into();
    let templates = tpl("hello");
    let ask = |who: &'static str, version: i64| NewApproval {
        approver: who,
        version,
        templates: &templates,
        plan: plan.clone(),
        signature: None,
        applied_by: None,
    };

    // the applier may not approve
    let e = s.campaign_approve(&c, &ask("alice", 1), now).await.unwrap_err();
    assert!(e.to_string().contains("was applied by alice, who cannot approve it too"), "{e}");
    assert_eq!(s.approval_current(&c).await.unwrap(), None);
    // another person may, once
    let a = s.campaign_approve(&c, &ask("bob", 1), now).await.unwrap();
    assert_eq!((a.version, a.approver.as_str()), (1, "bob"));
    assert_eq!(a.digest, approval_digest(&c.spec_hash, &a.templates, &plan));
    assert_eq!(s.approval_current(&c).await.unwrap(), Some(a.clone()));
    let e = s.campaign_approve(&c, &ask("carol", 1), now).await.unwrap_err();
    assert!(e.to_string().contains("already approved (by bob)"), "{e}");
    // the template versions are kept
    let kept = s.template_versions_get(&[templates[0].digest.clone()]).await.unwrap();
    assert_eq!(kept, templates);

    // a changed file: version 2, not approved; an approval of version 1 is refused
    let changed = format!("{SPEC}# changed\n");
    let (_, c2) = s.campaign_apply(&spec, &changed, "bob", now).await.unwrap();
    assert_eq!(c2.version, 2);
    assert_eq!(s.approval_current(&c2).await.unwrap(), None);
    let e = s.campaign_approve(&c2, &ask("carol", 1), now).await.unwrap_err();
    assert!(e.to_string().contains("is at version 2 now, not 1"), "{e}");
    // bob applied version 2: alice may approve it now
    s.campaign_approve(&c2, &ask("bob", 2), now).await.unwrap_err();
    s.campaign_approve(&c2, &ask("alice", 2), now).await.unwrap();

    let versions = s.campaign_versions(c.campaign_id).await.unwrap();
    let v: Vec<(i64, &str, &str)> =
        versions.iter().map(|v| (v.version, v.applied_by.as_str(), v.spec_toml.as_str())).collect();
    assert_eq!(v, [(1, "alice", SPEC), (2, "bob", changed.as_str())]);
    let kinds: Vec<String> = s
        .event_list(&Default::default(), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.kind, e.actor))
        .collect();
    assert_eq!(
        kinds,
        ["campaign.applied alice", "campaign.approved bob", "campaign.applied bob", "campaign.approved alice"]
    );
});
