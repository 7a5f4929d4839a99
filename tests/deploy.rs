//! The files under deploy/ checked offline: the Kubernetes manifests, one by one
//! and as each overlay renders them, against the API schemas
//! (`kubernetes-validate --strict`), the house rules every workload must follow
//! (grace periods that cover a stop, deadlines, a decision per exit code, the
//! network policy, one rate story), the Dockerfile's paths, binary and pinned base
//! images, the commands every deploy file runs, and the systemd units
//! (`systemd-analyze verify`). scripts/install-test-deps.sh installs both tools; a
//! missing one fails the test with that hint, never a silent pass.
//!
//! YAML is read through the Python that kubernetes-validate brings (PyYAML), so
//! that the test parses manifests the way the validator does and the crate needs
//! no YAML dependency. The overlays are rendered by scripts/render-kustomize.py
//! (kubectl is not on CI), compared with `kubectl kustomize` where kubectl is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The Kubernetes version the manifests are validated against: the oldest we
/// support (CronJob `timeZone` is GA since 1.27, `podFailurePolicy` since 1.31 and
/// beta, on by default, since 1.26).
const KUBERNETES_VERSION: &str = "1.30.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The venv's `bin/` holding kubernetes-validate and its Python, or a failure that
/// says how to install it. Never a silent pass.
fn venv_bin() -> PathBuf {
    let candidates = [
        std::env::var_os("REVERIFY_KV_VENV").map(|v| PathBuf::from(v).join("bin")),
        Some(root().join("target/kv-venv/bin")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("kubernetes-validate").exists() && d.join("python").exists())
        .unwrap_or_else(|| {
            panic!("kubernetes-validate is not installed: run scripts/install-test-deps.sh (it makes target/kv-venv)")
        })
}

/// Every document of a YAML file, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = Command::new(venv_bin().join("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run the venv's python");
    assert!(out.status.success(), "{}: not YAML: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

fn yaml_doc(rel: &str) -> Value {
    let mut docs = yaml_docs(&root().join(rel));
    assert_eq!(docs.len(), 1, "{rel}: one document expected");
    docs.remove(0)
}

fn kubernetes_validate(files: &[PathBuf]) -> std::process::Output {
    Command::new(venv_bin().join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION, "--no-warn"])
        .args(files)
        .output()
        .expect("run kubernetes-validate")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every shipped workload: the base's and the Job template for an unscheduled
/// campaign (deploy/kubernetes/jobs/, created by hand, not by the kustomization).
const WORKLOADS: [&str; 5] = [
    "deploy/kubernetes/base/cronjob.yaml",
    "deploy/kubernetes/base/deployment.yaml",
    "deploy/kubernetes/base/setup-job.yaml",
    "deploy/kubernetes/base/serve.yaml",
    "deploy/kubernetes/jobs/run-campaign.yaml",
];

fn is_kustomization(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "kustomization.yaml")
}

// --- the campaigns ConfigMap -------------------------------------------------------

/// The ConfigMap that holds `jobs/*.toml`, as it must read. `jobs/demo.toml` is
/// what `reverify demo` runs against its sandbox: it is never deployed.
fn campaigns_configmap() -> (String, BTreeMap<String, String>) {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("jobs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") && !p.ends_with("demo.toml") {
            files.insert(p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap());
        }
    }
    let mut y = String::from(
        "# GENERATED from jobs/*.toml by tests/deploy.rs: do not edit. After changing a\n\
         # campaign file run `REVERIFY_UPDATE_MANIFESTS=1 cargo test --test deploy`.\n\
         # Mounted at /etc/reverify/jobs; the reverify-setup Job applies each file.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: reverify-campaigns\ndata:\n",
    );
    for (name, text) in &files {
        assert!(text.ends_with('\n') && !text.ends_with("\n\n"), "jobs/{name}: end the file with exactly one newline");
        assert!(!text.contains('\t'), "jobs/{name}: a tab cannot sit in a YAML block; use spaces");
        y.push_str(&format!("  {name}: |\n"));
        for line in text.lines() {
            if line.is_empty() {
                y.push('\n');
            } else {
                y.push_str(&format!("    {line}\n"));
            }
        }
    }
    (y, files)
}

#[test]
fn the_campaigns_configmap_holds_every_campaign_file() {
    let rel = "deploy/kubernetes/base/campaigns.yaml";
    let (expected, files) = campaigns_configmap();
    let actual = std::fs::read_to_string(root().join(rel)).unwrap_or_default();
    if actual != expected {
        if std::env::var_os("REVERIFY_UPDATE_MANIFESTS").is_some() {
            std::fs::write(root().join(rel), &expected).unwrap();
        } else {
            panic!("{rel} is out of date with jobs/*.toml: run `REVERIFY_UPDATE_MANIFESTS=1 cargo test --test deploy`");
        }
    }
    // read back as YAML: each key holds its file byte for byte
    let cm = yaml_doc(rel);
    let data: BTreeMap<String, String> = serde_json::from_value(cm["data"].clone()).unwrap();
    assert_eq!(data, files);

    // the setup Job applies exactly these files, from where the ConfigMap is mounted
    let job = yaml_doc("deploy/kubernetes/base/setup-job.yaml");
    let spec = &job["spec"]["template"]["spec"];
    let apply = spec["containers"].as_array().unwrap().iter().find(|c| c["name"] == "apply-campaigns").unwrap();
    let args: Vec<String> = serde_json::from_value(apply["args"].clone()).unwrap();
    assert_eq!(&args[..2], ["campaign", "apply"]);
    let applied: Vec<String> = args[2..].to_vec();
    let expected: Vec<String> = files.keys().map(|k| format!("/etc/reverify/jobs/{k}")).collect();
    assert_eq!(applied, expected, "setup-job.yaml must apply every campaign file");
    assert_eq!(spec["initContainers"][0]["args"][0], "migrate", "migrations run before the campaigns are applied");
}

// --- schemas -------------------------------------------------------------------------

#[test]
fn every_manifest_is_valid_kubernetes() {
    let files: Vec<PathBuf> =
        yaml_files(&root().join("deploy/kubernetes")).into_iter().filter(|p| !is_kustomization(p)).collect();
    assert!(files.len() >= 8, "{files:?}");
    let out = kubernetes_validate(&files);
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // and the validator does reject: a misspelt field in a copy of the CronJob
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("cronjob.yaml");
    let text = read("deploy/kubernetes/base/cronjob.yaml");
    assert!(text.contains("  concurrencyPolicy: Allow\n"));
    std::fs::write(&broken, text.replace("  concurrencyPolicy: Allow\n", "  concurrencyPolicyy: Allow\n")).unwrap();
    let out = kubernetes_validate(&[broken]);
    assert!(!out.status.success(), "kubernetes-validate accepted an unknown field");
    assert!(String::from_utf8_lossy(&out.stdout).contains("concurrencyPolicyy"), "{out:?}");
}

#[test]
fn the_kustomizations_name_every_resource_and_render() {
    let base = root().join("deploy/kubernetes/base");
    let k = yaml_doc("deploy/kubernetes/base/kustomization.yaml");
    let listed: Vec<String> = serde_json::from_value(k["resources"].clone()).unwrap();
    for r in &listed {
        assert!(base.join(r).is_file(), "kustomization.yaml lists {r}, which does not exist");
    }
    for f in yaml_files(&base) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name == "kustomization.yaml" || name == "secret.example.yaml" {
            continue;
        }
        assert!(listed.contains(&name), "base/{name} is not in kustomization.yaml's resources");
    }
    assert!(!listed.iter().any(|r| r.contains("secret")), "the example Secret must not be deployed");

    // Render each overlay (scripts/render-kustomize.py; kubectl's own output must be
    // the same where kubectl is installed) and validate what it renders.
    let dir = tempfile::tempdir().unwrap();
    // (kind, name) each overlay keeps and drops: both keep `reverify serve` (the
    // click-through links, Baanx's webhooks, the dashboard), its Services and Ingress
    let serve: [(&str, &str); 6] = [
        ("Deployment", "reverify-serve"),
        ("Service", "reverify-public"),
        ("Service", "reverify-dashboard"),
        ("Ingress", "reverify-public"),
        ("Ingress", "reverify-bounces"),
        ("NetworkPolicy", "reverify-ops-ingress"),
    ];
    type Object<'a> = (&'a str, &'a str);
    let overlays: [(&str, Object, Object); 2] = [
        ("cronjob", ("CronJob", "reverify"), ("Deployment", "reverify-daemon")),
        ("daemon", ("Deployment", "reverify-daemon"), ("CronJob", "reverify")),
    ];
    for (overlay, keeps, drops) in overlays {
        let file = render_to(overlay, dir.path());
        let docs = yaml_docs(&file);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap_or_default()).collect();
        let has = |(kind, name): (&str, &str)| docs.iter().any(|d| d["kind"] == kind && d["metadata"]["name"] == name);
        assert!(has(keeps) && !has(drops), "{overlay}: {kinds:?}");
        for kept in serve {
            assert!(has(kept), "{overlay}: no {kept:?}");
        }
        assert_eq!(
            has(("Service", "reverify-metrics")),
            overlay == "daemon",
            "{overlay}: the daemon's metrics Service"
        );
        for needed in ["Job", "ConfigMap", "ServiceAccount", "NetworkPolicy"] {
            assert!(kinds.contains(&needed), "{overlay}: no {needed} in {kinds:?}");
        }
        for d in &docs {
            assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/part-of"], "reverify", "{overlay}: {d}");
            for spec in pod_specs_of(d) {
                for c in spec["containers"].as_array().unwrap() {
                    assert_eq!(c["image"], "reverify:0.1.0", "{overlay}: the images: rule applies");
                }
            }
        }
        let v = kubernetes_validate(&[file]);
        assert!(v.status.success(), "{overlay} renders invalid:\n{}", String::from_utf8_lossy(&v.stdout));

        match Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join("deploy/kubernetes/overlays").join(overlay))
            .output()
        {
            Err(_) => eprintln!("note: kubectl not found; {overlay} rendered by scripts/render-kustomize.py alone"),
            Ok(out) => {
                assert!(out.status.success(), "kubectl kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
                let theirs = dir.path().join(format!("{overlay}.kubectl.yaml"));
                std::fs::write(&theirs, &out.stdout).unwrap();
                let key = |d: &Value| serde_json::to_string(d).unwrap();
                let mut ours: Vec<String> = docs.iter().map(key).collect();
                let mut kubectl: Vec<String> = yaml_docs(&theirs).iter().map(key).collect();
                ours.sort();
                kubectl.sort();
                assert_eq!(ours, kubectl, "scripts/render-kustomize.py and kubectl kustomize differ on {overlay}");
            }
        }
    }

    // the Job template (not rendered) names the image the overlays deploy
    let images = &k["images"][0];
    let template = yaml_doc("deploy/kubernetes/jobs/run-campaign.yaml");
    assert_eq!(
        pod_spec(&template)["containers"][0]["image"],
        format!("{}:{}", images["name"].as_str().unwrap(), images["newTag"].as_str().unwrap()),
        "jobs/run-campaign.yaml: the image the overlays deploy"
    );

    // the renderer refuses what it does not understand instead of rendering it wrong
    let odd = tempfile::tempdir().unwrap();
    std::fs::write(odd.path().join("kustomization.yaml"), "resources: []\nnamePrefix: x-\n").unwrap();
    let out = render_command(odd.path()).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("namePrefix"), "{out:?}");
}

fn render_command(dir: &Path) -> Command {
    let mut c = Command::new(venv_bin().join("python"));
    c.arg(root().join("scripts/render-kustomize.py")).arg(dir);
    c
}

/// Renders an overlay into `dir/OVERLAY.yaml`.
fn render_to(overlay: &str, dir: &Path) -> PathBuf {
    let out = render_command(&root().join("deploy/kubernetes/overlays").join(overlay)).output().unwrap();
    assert!(out.status.success(), "render {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let file = dir.join(format!("{overlay}.yaml"));
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

/// The pod specs of a rendered resource (none for a resource that runs no pod).
fn pod_specs_of(doc: &Value) -> Vec<&Value> {
    match doc["kind"].as_str() {
        Some("CronJob" | "Deployment" | "Job") => vec![pod_spec(doc)],
        _ => vec![],
    }
}

// --- house rules -------------------------------------------------------------------

/// The pod spec of a workload manifest.
fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str() {
        Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        Some("Deployment" | "Job") => &doc["spec"]["template"]["spec"],
        other => panic!("not a workload: {other:?}"),
    }
}

#[test]
fn every_workload_runs_locked_down_with_secrets_as_files() {
    let secret = yaml_doc("deploy/kubernetes/base/secret.example.yaml");
    let secret_keys: BTreeMap<String, String> = serde_json::from_value(secret["stringData"].clone()).unwrap();
    assert!(secret_keys.values().all(|v| v.contains("REPLACE_ME")), "the example Secret holds placeholders only");
    assert!(read("deploy/kubernetes/base/secret.example.yaml").contains("secret manager"));

    for rel in WORKLOADS {
        let doc = yaml_doc(rel);
        let pod = pod_spec(&doc);
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{rel}");
        assert_eq!(psc["runAsUser"], 10001, "{rel}: the image's uid");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{rel}");
        assert!(pod["terminationGracePeriodSeconds"].as_u64().is_some_and(|g| g >= 30), "{rel}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{rel}");
        let containers = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().map(|v| v.iter()).into_iter().flatten());
        for c in containers {
            let name = c["name"].as_str().unwrap();
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{rel}/{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{rel}/{name}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{rel}/{name}");
            for kind in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(c["resources"][kind][res].is_string(), "{rel}/{name}: resources.{kind}.{res}");
                }
            }
            // secrets: files under /run/secrets/reverify named after the Secret's keys
            for e in c["env"].as_array().into_iter().flatten() {
                let var = e["name"].as_str().unwrap();
                if var.ends_with("_FILE") {
                    let path = e["value"].as_str().unwrap();
                    let key = path.strip_prefix("/run/secrets/reverify/").unwrap_or_else(|| panic!("{rel}: {path}"));
                    assert!(secret_keys.contains_key(key), "{rel}/{name}: {var} names {key}, not in the Secret");
                    assert_eq!(var, format!("REVERIFY_{}_FILE", key.to_ascii_uppercase()), "{rel}/{name}");
                    let mounted = c["volumeMounts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| m["mountPath"] == "/run/secrets/reverify" && m["readOnly"] == true);
                    assert!(mounted, "{rel}/{name}: {var} without the secrets mount");
                    assert!(secret_volume_holds(pod, key), "{rel}/{name}: {var}: the secrets volume leaves {key} out");
                }
                assert!(e["value"].as_str().is_none_or(|v| !v.contains("REPLACE_ME")), "{rel}: a secret inline");
            }
        }
    }

    let cron = yaml_doc("deploy/kubernetes/base/cronjob.yaml");
    let spec = &cron["spec"];
    // the per-campaign lease makes overlapping pods safe; Forbid would drop the other
    // campaigns' ticks and follow-ups while one long tick runs
    assert_eq!(spec["concurrencyPolicy"], "Allow");
    assert!(spec["startingDeadlineSeconds"].is_u64() && spec["timeZone"].is_string());
    assert!(spec["jobTemplate"]["spec"]["activeDeadlineSeconds"].is_u64());
    assert!(spec["jobTemplate"]["spec"]["backoffLimit"].is_u64());
    assert_eq!(
        pod_spec(&cron)["containers"][0]["args"],
        serde_json::json!(["run", "--due", "--max-duration", "4m", "--max-duration-exit", "0", "--log-format", "json"])
    );

    let daemon = yaml_doc("deploy/kubernetes/base/deployment.yaml");
    assert_eq!(daemon["spec"]["replicas"], 1);
    let c = &pod_spec(&daemon)["containers"][0];
    assert_eq!(c["ports"][0], serde_json::json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"}));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    // the daemon binds before it migrates (tests/cli/ops.rs): started = it answers
    let startup = &c["startupProbe"];
    assert_eq!(startup["httpGet"]["path"], "/healthz", "the startup probe asks /healthz, not /readyz");
    assert_eq!(startup["httpGet"]["port"], "metrics");
    let allowed = startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(allowed >= 30, "the startup probe allows {allowed} s to bind");
    let listen = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "REVERIFY_METRICS_LISTEN").unwrap();
    assert!(listen["value"].as_str().unwrap().ends_with(":9090"));
}

/// Whether the pod's `secrets` volume (the reverify-secrets Secret) holds `key`: all
/// its keys, or `key` among its `items`.
fn secret_volume_holds(pod: &Value, key: &str) -> bool {
    pod["volumes"].as_array().into_iter().flatten().any(|v| {
        v["secret"]["secretName"] == "reverify-secrets"
            && v["secret"]["items"]
                .as_array()
                .is_none_or(|items| items.iter().any(|i| i["key"] == key && i["path"] == key))
    })
}

// --- stopping, deadlines, exit codes ---------------------------------------------

/// What a stop takes, from SIGTERM to exit: the users in flight (the engine's
/// grace), sealing the run's audit events, the target counts and the metrics push
/// of a one-shot run (each bounded by its timeout), and a margin for the rest
/// (releasing claims, closing the pool).
fn stop_budget() -> Duration {
    let margin = Duration::from_secs(10);
    reverify::engine::EngineConfig::default().grace
        + reverify::engine::SEAL_ON_STOP
        + reverify::telemetry::server::READY_TIMEOUT
        + reverify::telemetry::server::PUSH_TIMEOUT
        + margin
}

/// `KEY=VALUE` of a unit's non-comment lines.
fn unit_setting(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

/// The value after `--max-duration` in an argument list.
fn max_duration(args: &[String]) -> Duration {
    let i = args.iter().position(|a| a == "--max-duration").unwrap_or_else(|| panic!("no --max-duration in {args:?}"));
    humantime::parse_duration(&args[i + 1]).unwrap()
}

#[test]
fn grace_periods_cover_a_whole_stop() {
    let budget = stop_budget().as_secs();
    for rel in WORKLOADS.into_iter().filter(|r| !r.ends_with("setup-job.yaml")) {
        let doc = yaml_doc(rel);
        let grace = pod_spec(&doc)["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(grace >= budget, "{rel}: terminationGracePeriodSeconds {grace} < the {budget} s a stop takes");
    }
    for unit in ["reverify.service", "reverify-daemon.service"] {
        let text = read(&format!("deploy/systemd/{unit}"));
        let stop = unit_setting(&text, "TimeoutStopSec").unwrap_or_else(|| panic!("{unit}: no TimeoutStopSec"));
        let stop = humantime::parse_duration(&stop).or_else(|_| stop.parse::<u64>().map(Duration::from_secs)).unwrap();
        assert!(stop.as_secs() >= budget, "{unit}: TimeoutStopSec {stop:?} < the {budget} s a stop takes");
        assert_eq!(unit_setting(&text, "KillSignal").as_deref(), Some("SIGTERM"), "{unit}");
    }
    // the docs say the same number
    let grace = pod_spec(&yaml_doc("deploy/kubernetes/base/cronjob.yaml"))["terminationGracePeriodSeconds"].clone();
    assert!(read("deploy/README.md").contains(&format!("terminationGracePeriodSeconds: {grace}")));
}

#[test]
fn runs_end_on_their_own_before_any_deadline() {
    // time to start (image pull, scheduling, migrations) before the run's clock starts
    let start = Duration::from_secs(5 * 60);
    let cron = yaml_doc("deploy/kubernetes/base/cronjob.yaml");
    let args: Vec<String> = serde_json::from_value(pod_spec(&cron)["containers"][0]["args"].clone()).unwrap();
    let deadline = Duration::from_secs(cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"].as_u64().unwrap());
    let run = max_duration(&args);
    // a slice and its stop, and one replacement pod's after a SIGTERM (exit 4)
    assert!(
        start + 2 * (run + stop_budget()) <= deadline,
        "cronjob.yaml: --max-duration {run:?} leaves no room for the stop before activeDeadlineSeconds {deadline:?}"
    );
    // a slice ends before the next pod starts, and exits 0: the next pod resumes
    let every: u64 = cron["spec"]["schedule"]
        .as_str()
        .unwrap()
        .strip_prefix("*/")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(run + stop_budget() <= Duration::from_secs(every * 60), "cronjob.yaml: a slice outlasts the schedule");
    let exit = args.iter().position(|a| a == "--max-duration-exit").map(|i| args[i + 1].as_str());
    assert_eq!(exit, Some("0"), "cronjob.yaml: a slice that reached --max-duration must end the Job as complete");

    // the Job template: its run stops itself before the Job's deadline
    let job = yaml_doc("deploy/kubernetes/jobs/run-campaign.yaml");
    let args: Vec<String> = serde_json::from_value(pod_spec(&job)["containers"][0]["args"].clone()).unwrap();
    assert_eq!(args[0], "run");
    let deadline = Duration::from_secs(job["spec"]["activeDeadlineSeconds"].as_u64().unwrap());
    let run = max_duration(&args);
    assert!(
        start + run + stop_budget() <= deadline,
        "jobs/run-campaign.yaml: --max-duration {run:?} leaves no room for the stop before activeDeadlineSeconds {deadline:?}"
    );

    let unit = read("deploy/systemd/reverify.service");
    let exec: Vec<String> =
        unit_setting(&unit, "ExecStart").unwrap().split_whitespace().skip(1).map(str::to_owned).collect();
    let limit = humantime::parse_duration(&unit_setting(&unit, "TimeoutStartSec").expect("TimeoutStartSec")).unwrap();
    let run = max_duration(&exec);
    assert!(
        start + run + stop_budget() <= limit,
        "reverify.service: --max-duration {run:?} leaves no room for the stop before TimeoutStartSec {limit:?}"
    );
    assert_eq!(unit_setting(&unit, "SuccessExitStatus").as_deref(), Some("4"), "exit 4 resumes: not a failure");
}

#[test]
fn every_exit_code_has_a_decided_pod_failure_action() {
    let cron = yaml_doc("deploy/kubernetes/base/cronjob.yaml");
    let job = &cron["spec"]["jobTemplate"]["spec"];
    assert_eq!(pod_spec(&cron)["restartPolicy"], "Never", "podFailurePolicy needs restartPolicy: Never");
    let container = pod_spec(&cron)["containers"][0]["name"].clone();
    let rules = job["podFailurePolicy"]["rules"].as_array().unwrap();
    // a disruption (drain, preemption) is never the run's fault, whatever its exit code
    assert_eq!(rules[0]["action"], "Ignore");
    assert_eq!(rules[0]["onPodConditions"], serde_json::json!([{"type": "DisruptionTarget", "status": "True"}]));
    let action = |code: u64| -> String {
        let rule = rules
            .iter()
            .find(|r| {
                let on = &r["onExitCodes"];
                on["operator"] == "In" && on["values"].as_array().is_some_and(|v| v.iter().any(|c| c == code))
            })
            .unwrap_or_else(|| panic!("no podFailurePolicy rule for exit {code}"));
        assert_eq!(rule["onExitCodes"]["containerName"], container);
        rule["action"].as_str().unwrap().to_owned()
    };
    // 1 failure: retry, counted; 2 usage and 3 partly bad input: a retry meets the
    // same input; 4 stopped with work left: not a failure (its next tick resumes it)
    let expected = [(1, "Count"), (2, "FailJob"), (3, "FailJob"), (4, "Ignore")];
    let readme = read("deploy/README.md");
    // the Job template for an unscheduled campaign: the same, but 4 (stopped with
    // work left) ends the Job: creating it again resumes, a retry meets the deadline
    let job = yaml_doc("deploy/kubernetes/jobs/run-campaign.yaml");
    assert_eq!(pod_spec(&job)["restartPolicy"], "Never");
    let job_rules = job["spec"]["podFailurePolicy"]["rules"].as_array().unwrap();
    assert_eq!(job_rules[0]["onPodConditions"], rules[0]["onPodConditions"]);
    for (code, want) in [(1, "Count"), (2, "FailJob"), (3, "FailJob"), (4, "FailJob")] {
        let rule = job_rules
            .iter()
            .find(|r| r["onExitCodes"]["values"].as_array().is_some_and(|v| v.iter().any(|c| c == code)))
            .unwrap_or_else(|| panic!("jobs/run-campaign.yaml: no podFailurePolicy rule for exit {code}"));
        assert_eq!(rule["action"], want, "jobs/run-campaign.yaml: exit {code}");
        assert_eq!(rule["onExitCodes"]["containerName"], pod_spec(&job)["containers"][0]["name"]);
    }
    for (code, want) in expected {
        assert_eq!(action(code), want, "exit {code}");
        let row = readme.lines().find(|l| l.starts_with(&format!("| {code} |"))).unwrap();
        assert!(
            row.contains(&format!("`{want}`")),
            "deploy/README.md's exit code {code} row does not say `{want}`: {row}"
        );
    }
}

// --- the network policy ------------------------------------------------------------

/// The port of a URL, or its scheme's default.
fn url_port(u: &str) -> u64 {
    let u = url::Url::parse(u).unwrap();
    u64::from(u.port_or_known_default().unwrap_or_else(|| match u.scheme() {
        "postgres" | "postgresql" => 5432,
        "smtp" => 587,
        "smtps" => 465,
        other => panic!("no default port for {other}"),
    }))
}

#[test]
fn the_network_policy_lets_reverify_reach_its_services_and_nothing_else() {
    let docs = yaml_docs(&root().join("deploy/kubernetes/base/networkpolicy.yaml"));
    let policy = |name: &str| docs.iter().find(|d| d["metadata"]["name"] == name).unwrap().clone();

    // egress: exactly DNS and the ports of the services in the settings
    let settings = yaml_doc("deploy/kubernetes/base/settings.yaml");
    let settings_text = read("deploy/kubernetes/base/settings.yaml");
    let pushgateway = settings_text
        .lines()
        .find_map(|l| l.trim().trim_start_matches("# ").strip_prefix("REVERIFY_METRICS_PUSH_URL: "))
        .expect("the Pushgateway example")
        .trim_matches('"')
        .to_owned();
    let secret = yaml_doc("deploy/kubernetes/base/secret.example.yaml");
    let mut expected: BTreeSet<(String, u64)> = [
        url_port(settings["data"]["REVERIFY_BAANX_BASE_URL"].as_str().unwrap()),
        url_port(settings["data"]["REVERIFY_SMTP_URL"].as_str().unwrap()),
        url_port(secret["stringData"]["database_url"].as_str().unwrap()),
        url_port(&pushgateway),
    ]
    .into_iter()
    .map(|p| ("TCP".to_owned(), p))
    .collect();
    expected.insert(("UDP".to_owned(), 53));
    expected.insert(("TCP".to_owned(), 53));

    let all = policy("reverify");
    assert_eq!(all["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(all["spec"]["ingress"].is_null(), "no connection in to the runs and the setup Job");
    let mut allowed = BTreeSet::new();
    for rule in all["spec"]["egress"].as_array().unwrap() {
        let ports = rule["ports"]
            .as_array()
            .unwrap_or_else(|| panic!("an egress rule with no ports allows every port: {rule}"));
        for p in ports {
            allowed.insert((p["protocol"].as_str().unwrap().to_owned(), p["port"].as_u64().unwrap()));
        }
        if ports.iter().any(|p| p["port"] == 53) {
            assert_eq!(rule["to"][0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns", "DNS goes to kube-dns only");
        }
    }
    assert_eq!(allowed, expected, "egress must allow DNS and the services' ports, and nothing else");

    // every workload's pods are selected
    let selector: BTreeMap<String, String> =
        serde_json::from_value(all["spec"]["podSelector"]["matchLabels"].clone()).unwrap();
    let matches = |labels: &Value| selector.iter().all(|(k, v)| labels[k] == v.as_str());
    for rel in WORKLOADS {
        let doc = yaml_doc(rel);
        let labels = match doc["kind"].as_str() {
            Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
            _ => &doc["spec"]["template"]["metadata"]["labels"],
        };
        assert!(matches(labels), "{rel}: its pods escape the network policy");
    }

    // ingress: one policy per listener, each port from its own clients only (checked
    // in each overlay as it renders: the_listeners_are_open_to_their_clients_only)
    let names: BTreeSet<&str> = docs.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["reverify", "reverify-ops-ingress", "reverify-public-ingress", "reverify-dashboard-ingress"].into(),
    );
}

/// Whether a selector (`matchLabels` and `In` / `NotIn` / `Exists` expressions)
/// selects these labels.
fn selects(selector: &Value, labels: &Value) -> bool {
    let by_labels = selector["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| labels[k] == *v);
    let by_expressions = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap();
        let values: Vec<&Value> = e["values"].as_array().into_iter().flatten().collect();
        match e["operator"].as_str().unwrap() {
            "In" => values.contains(&&labels[key]),
            "NotIn" => !values.contains(&&labels[key]),
            "Exists" => !labels[key].is_null(),
            "DoesNotExist" => labels[key].is_null(),
            other => panic!("selector operator {other}"),
        }
    });
    by_labels && by_expressions
}

/// The pod template labels of a workload.
fn pod_labels(doc: &Value) -> &Value {
    match doc["kind"].as_str() {
        Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
        _ => &doc["spec"]["template"]["metadata"]["labels"],
    }
}

/// A container's environment variable, from its `env` (the settings ConfigMap's
/// `envFrom` is looked up by the caller).
fn env_of<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array().into_iter().flatten().find(|e| e["name"] == name).and_then(|e| e["value"].as_str())
}

/// The port of `HOST:PORT`.
fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("{listen}: no port"))
}

/// What a container listens on: (public, ui, operations), each `HOST:PORT` as its
/// settings and arguments say (`serve --listen`, the daemon's `public_listen`).
fn listeners(c: &Value, settings: &Value) -> (Option<String>, Option<String>, Option<String>) {
    let var =
        |name: &str| env_of(c, name).map(str::to_owned).or_else(|| settings["data"][name].as_str().map(str::to_owned));
    let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap_or_default();
    let flag = |f: &str| args.iter().position(|a| a == f).map(|i| args[i + 1].clone());
    let public = match args.first().map(String::as_str) {
        // `serve` always serves its public routes, on --listen (default 127.0.0.1:8080)
        Some("serve") => Some(flag("--listen").unwrap_or_else(|| "127.0.0.1:8080".to_owned())),
        Some("daemon") => var("REVERIFY_PUBLIC_LISTEN"),
        _ => None,
    };
    let long_running = matches!(args.first().map(String::as_str), Some("serve" | "daemon"));
    let ui = var("REVERIFY_UI_LISTEN").filter(|_| long_running);
    let ops = var("REVERIFY_METRICS_LISTEN").filter(|_| long_running);
    (public, ui, ops)
}

/// Renders an overlay and returns its objects.
fn rendered(overlay: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    yaml_docs(&render_to(overlay, dir.path()))
}

/// The container port a Service port reaches in the pods it selects, with the
/// container: (workload, container, containerPort), for each workload selected.
fn service_backends<'a>(docs: &'a [Value], service: &Value, port: &Value) -> Vec<(&'a Value, &'a Value, u64)> {
    let svc_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port || p["port"] == *port)
        .unwrap_or_else(|| panic!("Service {} has no port {port}", service["metadata"]["name"]));
    let target = &svc_port["targetPort"];
    let mut out = Vec::new();
    for w in docs.iter().filter(|d| !pod_specs_of(d).is_empty()) {
        if !selects(&serde_json::json!({"matchLabels": service["spec"]["selector"]}), pod_labels(w)) {
            continue;
        }
        for c in pod_spec(w)["containers"].as_array().unwrap() {
            for p in c["ports"].as_array().into_iter().flatten() {
                if p["name"] == *target || p["containerPort"] == *target {
                    out.push((w, c, p["containerPort"].as_u64().unwrap()));
                }
            }
        }
    }
    out
}

/// Issue 25: the click-through links and Baanx's webhooks work as shipped. In each
/// overlay the Ingress routes exactly the public routes (the product's own paths),
/// over TLS, on public_url's host, to a Service port whose pods really serve them
/// there: a container whose settings and arguments put its public listener on that
/// port (never its operations or dashboard port) and that has the keys those routes
/// need. The dashboard has its own internal Service, and no Ingress reaches it.
#[test]
fn the_ingress_routes_the_public_routes_to_the_listener_that_serves_them() {
    // the paths the product serves on its public listener
    let link_prefix = reverify::click::LINK_PATH.split('{').next().unwrap().trim_end_matches('/');
    let webhook = reverify::webhooks::WEBHOOK_PATH;
    let bounces = reverify::bounces::http::BOUNCES_PREFIX;
    let expected: BTreeSet<(String, String)> = [
        (link_prefix.to_owned(), "Prefix".to_owned()),
        (webhook.to_owned(), "Exact".to_owned()),
        (bounces.to_owned(), "Prefix".to_owned()),
    ]
    .into();
    for overlay in ["cronjob", "daemon"] {
        let docs = rendered(overlay);
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{overlay}: no {kind} {name}"))
        };
        let settings = find("ConfigMap", "reverify-settings");
        let public_url =
            url::Url::parse(settings["data"]["REVERIFY_PUBLIC_URL"].as_str().expect("public_url set")).unwrap();
        assert_eq!(public_url.scheme(), "https");
        let ingresses: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Ingress").collect();
        assert!(!ingresses.is_empty(), "{overlay}: no Ingress: nothing public reaches the links and webhooks");
        let mut routed_services = BTreeSet::new();
        let mut routed = BTreeSet::new();
        for ing in &ingresses {
            assert!(ing["spec"]["defaultBackend"].is_null(), "{overlay}: a default backend routes every path");
            let tls = ing["spec"]["tls"].as_array().expect("the Ingress terminates TLS");
            for rule in ing["spec"]["rules"].as_array().unwrap() {
                let host = rule["host"].as_str().expect("a rule names its host");
                assert_eq!(Some(host), public_url.host_str(), "{overlay}: the Ingress host is public_url's");
                assert!(
                    tls.iter().any(|t| t["hosts"].as_array().unwrap().iter().any(|h| h == host)
                        && t["secretName"].as_str().is_some_and(|s| !s.is_empty())),
                    "{overlay}: {host} has no TLS secret"
                );
                for path in rule["http"]["paths"].as_array().unwrap() {
                    let p = path["path"].as_str().unwrap().to_owned();
                    routed.insert((p.clone(), path["pathType"].as_str().unwrap().to_owned()));
                    let backend = &path["backend"]["service"];
                    let service = find("Service", backend["name"].as_str().unwrap());
                    assert_eq!(service["spec"]["type"], "ClusterIP", "{overlay}: only the Ingress exposes it");
                    routed_services.insert(backend["name"].as_str().unwrap().to_owned());
                    let port = if backend["port"]["name"].is_string() {
                        backend["port"]["name"].clone()
                    } else {
                        backend["port"]["number"].clone()
                    };
                    let backends = service_backends(&docs, service, &port);
                    assert!(
                        !backends.is_empty(),
                        "{overlay}: {p} goes to {port} of {}, which no pod serves",
                        service["metadata"]["name"]
                    );
                    for (w, c, container_port) in backends {
                        let who = format!("{overlay}: {p} -> {}/{}", w["metadata"]["name"], c["name"]);
                        let (public, ui, ops) = listeners(c, settings);
                        let public = public.unwrap_or_else(|| panic!("{who}: the container serves no public routes"));
                        assert_eq!(port_of(&public), container_port, "{who}: its public listener is {public}");
                        assert!(
                            public.starts_with("0.0.0.0:") || public.starts_with("[::]:"),
                            "{who}: {public} is not reachable from the Ingress controller"
                        );
                        let ops = ops.unwrap_or_else(|| panic!("{who}: no operations listener for its probes"));
                        assert_ne!(port_of(&ops), container_port, "{who}: the operations port behind the Ingress");
                        assert!(
                            ui.is_none_or(|u| port_of(&u) != container_port),
                            "{who}: the dashboard behind the Ingress"
                        );
                        // behind the Ingress, X-Forwarded-For names the client only from
                        // the proxies it trusts (the click page's per-address limit)
                        let proxies = env_of(c, "REVERIFY_TRUSTED_PROXIES")
                            .or_else(|| settings["data"]["REVERIFY_TRUSTED_PROXIES"].as_str())
                            .unwrap_or_default();
                        assert!(
                            !proxies.trim().is_empty(),
                            "{who}: no trusted_proxies: every click counts as the controller's"
                        );
                        // the keys the routes need (serve.rs public_router)
                        let needs: &[&str] = if p == webhook {
                            &["REVERIFY_WEBHOOK_KEY_FILE"]
                        } else if p == bounces {
                            // Postmark's; SES and SendGrid take a plain setting
                            &["REVERIFY_BOUNCE_WEBHOOK_SECRET_FILE"]
                        } else {
                            &["REVERIFY_BAANX_CLIENT_KEY_FILE", "REVERIFY_TOKEN_KEY_FILE"]
                        };
                        for var in needs {
                            assert!(env_of(c, var).is_some(), "{who}: {p} needs {var}");
                        }
                        // the Service the Ingress reaches exposes nothing but public ports
                        for sp in service["spec"]["ports"].as_array().unwrap() {
                            for (_, _, cp) in service_backends(&docs, service, &sp["name"]) {
                                assert_ne!(
                                    cp,
                                    port_of(&ops),
                                    "{overlay}: {} exposes the operations port",
                                    service["metadata"]["name"]
                                );
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(routed, expected, "{overlay}: the Ingress routes exactly the public routes");

        // the dashboard: its own Service to ui_listen, internal, behind no Ingress
        let dashboard = find("Service", "reverify-dashboard");
        assert_eq!(dashboard["spec"]["type"], "ClusterIP");
        assert!(!routed_services.contains("reverify-dashboard"), "{overlay}: the dashboard is internal by default");
        let backends = service_backends(&docs, dashboard, &serde_json::json!("ui"));
        assert!(!backends.is_empty(), "{overlay}: nothing serves the dashboard Service");
        for (w, c, cp) in backends {
            let (_, ui, _) = listeners(c, settings);
            let ui = ui.unwrap_or_else(|| panic!("{overlay}: {} sets no ui_listen", w["metadata"]["name"]));
            assert_eq!(port_of(&ui), cp, "{overlay}: the dashboard Service reaches ui_listen");
            assert!(env_of(c, "REVERIFY_UI_USERS_FILE").is_some(), "{overlay}: the dashboard has no users");
        }
    }
}

/// Issue 25: each listener's port is open to its own clients only, in each overlay
/// as it renders: the operations port (/metrics, /readyz) to the monitoring
/// namespace alone (never every namespace, never the Ingress controller), the
/// public port to the Ingress controller's namespace, the dashboard to this
/// namespace. No ingress rule opens every port or admits every source.
#[test]
fn the_listeners_are_open_to_their_clients_only() {
    for overlay in ["cronjob", "daemon"] {
        let docs = rendered(overlay);
        let settings = docs.iter().find(|d| d["metadata"]["name"] == "reverify-settings").unwrap();
        let policies: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "NetworkPolicy")
            .filter(|d| d["spec"]["policyTypes"].as_array().unwrap().iter().any(|t| t == "Ingress"))
            .collect();
        for p in &policies {
            for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
                let name = &p["metadata"]["name"];
                assert!(
                    rule["ports"].as_array().is_some_and(|v| !v.is_empty()),
                    "{overlay}: {name}: a rule for every port"
                );
                let from = rule["from"].as_array().unwrap_or_else(|| panic!("{overlay}: {name}: a rule from anywhere"));
                assert!(!from.is_empty(), "{overlay}: {name}: a rule from anywhere");
                for peer in from {
                    assert!(peer["ipBlock"].is_null(), "{overlay}: {name}: an ipBlock: {peer}");
                    let ns = &peer["namespaceSelector"];
                    assert!(
                        ns.is_null() || ns["matchLabels"]["kubernetes.io/metadata.name"].is_string(),
                        "{overlay}: {name}: a peer in every namespace (or any labelled one): {peer}"
                    );
                }
            }
        }
        // the namespaces a port of a pod is open to (None: this namespace's pods)
        let admitted = |labels: &Value, port: u64| -> BTreeSet<Option<String>> {
            let mut out = BTreeSet::new();
            for p in policies.iter().filter(|p| selects(&p["spec"]["podSelector"], labels)) {
                for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
                    if rule["ports"].as_array().unwrap().iter().any(|pp| pp["port"] == port) {
                        for peer in rule["from"].as_array().unwrap() {
                            out.insert(
                                peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                                    .as_str()
                                    .map(str::to_owned),
                            );
                        }
                    }
                }
            }
            out
        };
        let mut seen_ops = false;
        for w in docs.iter().filter(|d| !pod_specs_of(d).is_empty()) {
            let labels = pod_labels(w);
            let name = w["metadata"]["name"].as_str().unwrap();
            for c in pod_spec(w)["containers"].as_array().unwrap() {
                let (public, ui, ops) = listeners(c, settings);
                let declared: BTreeSet<u64> =
                    c["ports"].as_array().into_iter().flatten().map(|p| p["containerPort"].as_u64().unwrap()).collect();
                let listening: BTreeSet<u64> = [&public, &ui, &ops].into_iter().flatten().map(|l| port_of(l)).collect();
                assert_eq!(declared, listening, "{overlay}: {name}: its declared ports are its listeners");
                if let Some(ops) = &ops {
                    seen_ops = true;
                    let from = admitted(labels, port_of(ops));
                    assert_eq!(
                        from,
                        [Some("monitoring".to_owned())].into(),
                        "{overlay}: {name}: the operations port is open to {from:?}"
                    );
                }
                if let Some(public) = &public {
                    let from = admitted(labels, port_of(public));
                    assert!(
                        from.len() == 1 && from.iter().all(|n| n.as_ref().is_some_and(|n| n != "monitoring")),
                        "{overlay}: {name}: the public port is open to {from:?}, not the Ingress controller's namespace"
                    );
                }
                if let Some(ui) = &ui {
                    let from = admitted(labels, port_of(ui));
                    assert_eq!(from, [None].into(), "{overlay}: {name}: the dashboard is open to {from:?}");
                }
                // a pod with no listener is open to nothing
                for port in [8080, 8081, 9090] {
                    if !listening.contains(&port) {
                        assert!(
                            admitted(labels, port).is_empty(),
                            "{overlay}: {name}: port {port} open with no listener"
                        );
                    }
                }
            }
        }
        assert!(seen_ops, "{overlay}: no operations listener");
    }
    // and nothing says Baanx's webhooks go to the operations port
    let mut files = vec![root().join("README.md")];
    files.extend(all_files(&root().join("deploy")));
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("9090")) {
            let l = line.to_lowercase();
            assert!(!l.contains("webhook"), "{}: {line}: webhooks never go to the operations port", f.display());
        }
    }
}

/// Issue 25: every workload that runs campaigns has the secrets the shipped
/// campaigns' channels need, as files: the notify webhook key for a webhook
/// campaign, the SMTP password for email (not only the setup Job's `campaign
/// apply`), so that the webhook campaign, its follow-ups and reminders run
/// wherever campaigns run.
#[test]
fn every_workload_that_runs_campaigns_has_the_keys_their_channels_need() {
    let mut channels = BTreeSet::new();
    for (name, text) in campaigns_configmap().1 {
        let spec: toml::Table = text.parse().unwrap_or_else(|e| panic!("jobs/{name}: {e}"));
        let channel = spec.get("delivery").and_then(|d| d.get("channel")).and_then(|c| c.as_str()).unwrap_or("email");
        channels.insert(channel.to_owned());
    }
    assert!(channels.contains("webhook"), "a shipped campaign uses the webhook channel: {channels:?}");
    let needs: Vec<(&str, &str)> = channels
        .iter()
        .filter_map(|c| match c.as_str() {
            "webhook" => Some(("REVERIFY_NOTIFY_WEBHOOK_KEY_FILE", "notify_webhook_key")),
            "email" => Some(("REVERIFY_SMTP_PASSWORD_FILE", "smtp_password")),
            _ => None,
        })
        .collect();
    let mut runners = 0;
    for rel in WORKLOADS {
        let doc = yaml_doc(rel);
        let pod = pod_spec(&doc);
        for c in pod["containers"].as_array().unwrap() {
            let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
            let runs = matches!(args[0].as_str(), "run" | "daemon") || args[..2] == ["campaign", "apply"];
            let name = c["name"].as_str().unwrap();
            if !runs {
                // the rest never sends a message: it holds neither key
                for (var, _) in &needs {
                    assert!(env_of(c, var).is_none(), "{rel}/{name}: {var} where no campaign runs");
                }
                continue;
            }
            runners += 1;
            for (var, key) in &needs {
                if *key == "smtp_password" && args[0] == "campaign" {
                    continue; // apply checks the channel's settings, it sends nothing
                }
                assert_eq!(
                    env_of(c, var),
                    Some(format!("/run/secrets/reverify/{key}").as_str()),
                    "{rel}/{name} runs campaigns without {var}"
                );
                let mounted = c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["mountPath"] == "/run/secrets/reverify");
                assert!(mounted && secret_volume_holds(pod, key), "{rel}/{name}: {key} is not mounted");
            }
        }
    }
    assert_eq!(runners, 4, "the setup Job, the CronJob, the daemon and the Job template run campaigns");
}

// --- one rate story ----------------------------------------------------------------

#[test]
fn rates_are_fleet_totals_and_every_workload_says_how_many_share_them() {
    let env_value = |doc: &Value, name: &str| -> Option<String> {
        pod_spec(doc)["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_owned))
    };
    let cron = yaml_doc("deploy/kubernetes/base/cronjob.yaml");
    let parallelism = cron["spec"]["jobTemplate"]["spec"]["parallelism"].as_u64().expect("an explicit parallelism");
    assert_eq!(env_value(&cron, "REVERIFY_WORKERS"), Some(parallelism.to_string()), "cronjob.yaml");
    let daemon = yaml_doc("deploy/kubernetes/base/deployment.yaml");
    let replicas = daemon["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(env_value(&daemon, "REVERIFY_WORKERS"), Some(replicas.to_string()), "deployment.yaml");
    // serve's click route calls Baanx too; the Job template runs a campaign
    let serve = yaml_doc("deploy/kubernetes/base/serve.yaml");
    let replicas = serve["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(env_value(&serve, "REVERIFY_WORKERS"), Some(replicas.to_string()), "serve.yaml");
    let job = yaml_doc("deploy/kubernetes/jobs/run-campaign.yaml");
    let parallelism = job["spec"]["parallelism"].as_u64().expect("an explicit parallelism");
    assert_eq!(env_value(&job, "REVERIFY_WORKERS"), Some(parallelism.to_string()), "jobs/run-campaign.yaml");
    let settings = yaml_doc("deploy/kubernetes/base/settings.yaml");
    assert!(settings["data"]["REVERIFY_WORKERS"].is_null(), "set per workload, next to its replica count");

    // no file says a rate is per worker (the story before `workers`)
    let mut files = vec![root().join("README.md"), root().join("reverify.example.toml")];
    for dir in ["deploy", "jobs"] {
        files.extend(all_files(&root().join(dir)));
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default().to_lowercase().replace('\n', " ");
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for stale in [
            "divided by",
            "full rate",
            "applies the full",
            "gets the full",
            "likewise per worker",
            "this worker's baanx request rate",
            "the worker's total baanx request rate",
            "per worker. every replica",
        ] {
            assert!(!text.contains(stale), "{}: says {stale:?}: rates are totals for the fleet", f.display());
        }
    }
    let deploy_readme = read("deploy/README.md");
    assert!(deploy_readme.contains("REVERIFY_WORKERS") && deploy_readme.contains("totals for the fleet"));
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() { out.extend(all_files(&p)) } else { out.push(p) }
    }
    out
}

// --- the Dockerfile ------------------------------------------------------------------

/// Instructions of a Dockerfile, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(t.trim_end_matches('\\'));
        current.push(' ');
        if !t.ends_with('\\') {
            let s = current.trim().to_owned();
            let (op, rest) = s.split_once(' ').unwrap_or((&s, ""));
            out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
            current.clear();
        }
    }
    out
}

/// The `[[bin]]` names of Cargo.toml (the package name when none is declared).
fn cargo_bins() -> Vec<String> {
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let bins: Vec<String> = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .map(|a| a.iter().filter_map(|b| b.get("name")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if bins.is_empty() { vec![manifest["package"]["name"].as_str().unwrap().to_owned()] } else { bins }
}

#[test]
fn the_dockerfile_copies_real_paths_and_ships_a_real_binary() {
    let steps = instructions(&read("deploy/Dockerfile"));
    let bins = cargo_bins();
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    let froms: Vec<String> = steps.iter().filter(|(op, _)| op == "FROM").map(|(_, a)| base_image(&steps, a)).collect();
    assert!(froms.len() >= 2 && froms[0].starts_with("rust:") && froms[0].ends_with(" AS builder"), "{froms:?}");

    let mut copied_from_context = Vec::new();
    let mut built_binary = None;
    for (op, args) in &steps {
        match op.as_str() {
            "COPY" | "ADD" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let from_stage = words.iter().any(|w| w.starts_with("--from="));
                let paths: Vec<&str> = words.iter().copied().filter(|w| !w.starts_with("--")).collect();
                let (sources, _dest) = paths.split_at(paths.len() - 1);
                for src in sources {
                    if from_stage {
                        if let Some(bin) = src.strip_prefix("/out/usr/local/bin/") {
                            assert!(bins.iter().any(|b| b == bin), "COPY of binary {bin}, not a [[bin]] of Cargo.toml");
                        }
                    } else {
                        assert!(
                            root().join(src).exists(),
                            "the Dockerfile copies {src}, which is not in the repository"
                        );
                        assert!(
                            !ignored.iter().any(|i| i == src),
                            ".dockerignore excludes {src}, which the Dockerfile copies"
                        );
                        copied_from_context.push(src.to_string());
                    }
                }
            }
            "RUN" if args.contains("target/release/") => {
                assert!(args.contains("cargo build --release --locked"), "{args}");
                let bin = args.split("target/release/").nth(1).unwrap().split_whitespace().next().unwrap();
                assert!(bins.iter().any(|b| b == bin), "the Dockerfile installs {bin}, not a [[bin]] of Cargo.toml");
                built_binary = Some(bin.to_owned());
            }
            _ => {}
        }
    }
    let bin = built_binary.expect("the builder installs a binary from target/release");
    for needed in ["Cargo.toml", "Cargo.lock", "src", "migrations", "jobs"] {
        assert!(copied_from_context.iter().any(|c| c == needed), "the Dockerfile does not copy {needed}");
    }
    // what the build reads at compile time must be in the builder
    for (path, text) in rust_sources(&root().join("src")) {
        for lit in text.split("migrate!(\"").skip(1) {
            let dir = lit.split('"').next().unwrap();
            assert!(copied_from_context.iter().any(|c| dir.starts_with(c.as_str())), "{path:?} reads {dir}");
        }
        if text.contains("include_str!(\"../../jobs") {
            let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
            // the builder stage: from the first FROM instruction to the next
            let builder = dockerfile.split("\nFROM ").nth(1).unwrap_or_default();
            assert!(
                builder.contains("COPY jobs ./jobs"),
                "{path:?} compiles in jobs/, which the builder stage must copy"
            );
        }
    }
    let last = |op: &str| steps.iter().rev().find(|(o, _)| o == op).map(|(_, a)| a.clone()).unwrap();
    assert_eq!(last("ENTRYPOINT"), format!("[\"/usr/local/bin/{bin}\"]"));
    assert_eq!(last("CMD"), "[\"daemon\"]");
    assert_eq!(last("USER"), "10001:10001", "the runtime runs as uid 10001, not root");
    // no target declared by Cargo.toml lives in a directory the build context leaves out
    for line in read("Cargo.toml").lines().filter(|l| l.trim_start().starts_with("path")) {
        assert!(!ignored.iter().any(|i| line.contains(&format!("\"{i}/"))), "Cargo.toml {line} is .dockerignored");
    }
}

/// The sentinel an unpinned digest holds: the build stops on it, naming the script.
const UNPINNED: &str = "sha256:unpinned-run-scripts-pin-base-images";

/// The default of a global `ARG NAME=VALUE` (before the first FROM).
fn global_arg(steps: &[(String, String)], name: &str) -> String {
    steps
        .iter()
        .take_while(|(op, _)| op != "FROM")
        .filter(|(op, _)| op == "ARG")
        .find_map(|(_, a)| a.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no global ARG {name}= before the first FROM"))
}

/// A FROM's image with its ARGs filled in. Every base image must be
/// `${X_IMAGE}@${X_DIGEST}`: a tag that says what it is, a digest that is pulled.
fn base_image(steps: &[(String, String)], from: &str) -> String {
    let (image, rest) = from.split_once(' ').unwrap_or((from, ""));
    let refs: Vec<&str> = image.split('@').collect();
    let [tag, digest] = refs[..] else { panic!("FROM {from}: not pinned as ${{X_IMAGE}}@${{X_DIGEST}}") };
    let name = tag
        .strip_prefix("${")
        .and_then(|t| t.strip_suffix("_IMAGE}"))
        .unwrap_or_else(|| panic!("FROM {from}: the image must come from an ARG *_IMAGE"));
    assert_eq!(digest, format!("${{{name}_DIGEST}}"), "FROM {from}: its digest must come from ARG {name}_DIGEST");
    let tag = global_arg(steps, &format!("{name}_IMAGE"));
    let digest = global_arg(steps, &format!("{name}_DIGEST"));
    assert!(!tag.is_empty() && !tag.contains('@'), "{name}_IMAGE={tag}: the tag alone");
    let pinned = digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(pinned || digest == UNPINNED, "{name}_DIGEST={digest}: neither a sha256 digest nor the unpinned marker");
    if !pinned {
        eprintln!("note: deploy/Dockerfile: {name}_DIGEST is not pinned yet: run scripts/pin-base-images.sh (online)");
    }
    format!("{tag}@{digest} {rest}").trim_end().to_owned()
}

#[test]
fn the_pin_script_writes_every_base_image_digest() {
    use std::os::unix::fs::PermissionsExt as _;
    // a stand-in for crane: the registry cannot be reached from a test
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("asked");
    let crane = bin.join("crane");
    std::fs::write(
        &crane,
        format!(
            "#!/bin/sh\n[ \"$1\" = digest ] || exit 2\necho \"$2\" >> {log}\n\
             case \"$2\" in rust:*) d=a ;; *) d=b ;; esac\n\
             printf 'sha256:'; for _ in $(seq 64); do printf $d; done; echo\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&crane, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let copy = dir.path().join("Dockerfile");
    std::fs::copy(root().join("deploy/Dockerfile"), &copy).unwrap();
    let pin =
        || Command::new(root().join("scripts/pin-base-images.sh")).arg(&copy).env("PATH", &path).output().unwrap();
    let out = pin();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let steps = instructions(&std::fs::read_to_string(&copy).unwrap());
    let original = instructions(&read("deploy/Dockerfile"));
    let asked = std::fs::read_to_string(&log).unwrap();
    for name in ["RUST", "RUNTIME"] {
        let tag = global_arg(&original, &format!("{name}_IMAGE"));
        assert!(asked.lines().any(|l| l == tag), "the script did not resolve {tag}: {asked}");
        assert_eq!(global_arg(&steps, &format!("{name}_IMAGE")), tag, "the tag is kept");
    }
    let froms: Vec<String> = steps.iter().filter(|(op, _)| op == "FROM").map(|(_, a)| base_image(&steps, a)).collect();
    assert_eq!(froms[0], format!("rust:1.95-slim-bookworm@sha256:{} AS builder", "a".repeat(64)));
    assert!(froms[1].ends_with(&format!("@sha256:{}", "b".repeat(64))), "{froms:?}");

    // a resolver that answers nonsense changes nothing
    std::fs::write(&crane, "#!/bin/sh\necho latest\n").unwrap();
    let before = std::fs::read_to_string(&copy).unwrap();
    let out = pin();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a sha256 digest"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), before);
}

fn rust_sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(rust_sources(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

// --- the commands the deploy files run ---------------------------------------------

/// Every reverify argument list in the deploy files: the Dockerfile's CMD, each
/// container's args, each ExecStart.
fn deploy_commands() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let steps = instructions(&read("deploy/Dockerfile"));
    let cmd = steps.iter().rev().find(|(o, _)| o == "CMD").unwrap();
    out.push(("deploy/Dockerfile CMD".to_owned(), serde_json::from_str(&cmd.1).unwrap()));
    for rel in WORKLOADS {
        let doc = yaml_doc(rel);
        let pod = pod_spec(&doc);
        for c in
            pod["containers"].as_array().unwrap().iter().chain(pod["initContainers"].as_array().into_iter().flatten())
        {
            let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
            out.push((format!("{rel} {}", c["name"]), args));
        }
    }
    for unit in ["reverify.service", "reverify-daemon.service"] {
        let text = read(&format!("deploy/systemd/{unit}"));
        // ExecStart and ExecStartPre (a leading `-` only says a failure is ignored)
        let execs = text
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart=").or_else(|| l.strip_prefix("ExecStartPre=")))
            .map(|e| e.trim_start_matches('-'));
        for exec in execs {
            let mut words = exec.split_whitespace();
            assert_eq!(words.next(), Some("/usr/local/bin/reverify"), "{unit}");
            out.push((unit.to_owned(), words.map(str::to_owned).collect()));
        }
    }
    out
}

#[test]
fn every_command_the_deploy_files_run_exists() {
    let bin = env!("CARGO_BIN_EXE_reverify");
    let dir = tempfile::tempdir().unwrap();
    for (whence, args) in deploy_commands() {
        // clap checks the words and exits 0 on --help without running anything; the
        // setup Job's file arguments are checked against the ConfigMap elsewhere
        let out = Command::new(bin)
            .args(&args)
            .arg("--help")
            .current_dir(dir.path())
            .env_remove("REVERIFY_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{whence} runs `reverify {}`, which this binary refuses:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// --- systemd ---------------------------------------------------------------------

#[test]
fn the_systemd_units_verify() {
    let units = ["reverify.service", "reverify.timer", "reverify-daemon.service"];
    let timer = read("deploy/systemd/reverify.timer");
    assert!(timer.contains("Persistent=true") && timer.contains("OnCalendar="), "{timer}");
    let oneshot = read("deploy/systemd/reverify.service");
    assert!(oneshot.contains("Type=oneshot") && oneshot.contains("ExecStart=/usr/local/bin/reverify run --due"));
    let daemon = read("deploy/systemd/reverify-daemon.service");
    for needed in ["Type=simple", "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes"] {
        assert!(daemon.contains(needed), "reverify-daemon.service lacks {needed}");
    }
    for (unit, text) in [("reverify.service", &oneshot), ("reverify-daemon.service", &daemon)] {
        assert!(text.contains("EnvironmentFile=-/etc/reverify/env"), "{unit}");
        // the campaign files are applied (all of jobs_dir) before the worker starts
        let pre = text.find("ExecStartPre=-/usr/local/bin/reverify campaign apply\n");
        assert!(pre.is_some_and(|p| p < text.find("ExecStart=").unwrap()), "{unit}: no campaign apply first");
        assert!(text.contains("Environment=REVERIFY_JOBS_DIR="), "{unit}");
        // Secrets: each LoadCredential= id is the name of a secret key, which reverify
        // reads from $CREDENTIALS_DIRECTORY itself: no %d (systemd 251), so the units
        // work from systemd 247, where LoadCredential= came.
        let settings: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
        assert!(!settings.iter().any(|l| l.contains("%d")), "{unit}: %d needs systemd 251");
        let creds: Vec<&str> = settings.iter().filter_map(|l| l.strip_prefix("LoadCredential=")).collect();
        assert!(creds.len() >= 2, "{unit}: {creds:?}");
        for c in &creds {
            let (id, path) = c.split_once(':').unwrap();
            assert!(
                reverify::config::SECRET_KEYS.contains(&id),
                "{unit}: credential {id} is no secret key reverify reads"
            );
            assert_eq!(path, format!("/etc/reverify/credentials/{id}"), "{unit}");
        }
        assert!(
            !settings.iter().any(|l| l.starts_with("Environment=REVERIFY_") && l.contains("_FILE=")),
            "{unit}: a _FILE variable would hide the credential"
        );
    }

    // the binary finds the units' credentials where systemd puts them: `users rekey`
    // needs token_key, and finds it only there
    let creds = tempfile::tempdir().unwrap();
    for c in oneshot.lines().filter_map(|l| l.strip_prefix("LoadCredential=")) {
        let id = c.split_once(':').unwrap().0;
        let value =
            if id == "token_key" { reverify::crypto::TokenCipher::generate_key() } else { format!("{id}-value") };
        std::fs::write(creds.path().join(id), value).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let rekey = |credentials: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
        c.args(["users", "rekey"])
            .current_dir(work.path())
            .env_clear()
            .env("REVERIFY_DATABASE_URL", format!("sqlite://{}", work.path().join("r.db").display()));
        if let Some(dir) = credentials {
            c.env("CREDENTIALS_DIRECTORY", dir);
        }
        c.output().unwrap()
    };
    let out = rekey(Some(creds.path()));
    assert!(out.status.success(), "users rekey with the units' credentials:\n{}", String::from_utf8_lossy(&out.stderr));
    let out = rekey(None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("token_key"), "{out:?}");

    let probe = Command::new("systemd-analyze").arg("--version").output().unwrap_or_else(|e| {
        panic!("systemd-analyze is not installed ({e}): run scripts/install-test-deps.sh (Debian's systemd package)")
    });
    assert!(probe.status.success());
    // verify checks that ExecStart exists: point it at the binary cargo built
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_reverify");
    let mut paths = Vec::new();
    for u in units {
        let text = read(&format!("deploy/systemd/{u}")).replace("/usr/local/bin/reverify", bin);
        let p = dir.path().join(u);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let verify = |paths: &[PathBuf]| -> (bool, Vec<String>) {
        let out = Command::new("systemd-analyze").arg("verify").args(paths).output().unwrap();
        // without a running systemd (a container), verify may only complain about that
        let problems = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                !l.contains("System has not been booted with systemd") && !l.contains("Failed to connect to bus")
            })
            .map(str::to_owned)
            .collect();
        (out.status.success(), problems)
    };
    let (ok, problems) = verify(&paths);
    assert!(ok && problems.is_empty(), "systemd-analyze verify:\n{}", problems.join("\n"));

    // and it does read them here: a misspelt key and a bad time are reported
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let text = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(text.contains("\nKillSignal=SIGTERM\n") && text.contains("\nTimeoutStartSec="));
    let text = text
        .replace("\nKillSignal=SIGTERM\n", "\nKillSignall=SIGTERM\n")
        .replace("\nTimeoutStartSec=", "\nTimeoutStartSec=soon");
    std::fs::write(broken.join("reverify.service"), text).unwrap();
    let (_, problems) = verify(&[broken.join("reverify.service")]);
    assert!(problems.iter().any(|l| l.contains("KillSignall")), "{problems:?}");
    assert!(problems.iter().any(|l| l.contains("soon")), "{problems:?}");
}

// --- Prometheus: the ServiceMonitor and the alert rules -----------------------------

/// The `## ` headings of deploy/RUNBOOK.md as GitHub makes their anchors (an
/// alert's name, lowercased).
fn runbook_anchors() -> BTreeSet<String> {
    read("deploy/RUNBOOK.md")
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase().replace(' ', "-"))
        .collect()
}

/// Issue 25: the ServiceMonitor scrapes the operations port of the daemon and of
/// `reverify serve` in each overlay, through the Services that expose it, and
/// nothing else; the PrometheusRule holds exactly the rules of the plain rules file
/// (scripts/gen-rules.py); every alert has a severity, a summary, a description and
/// a runbook_url into a section of deploy/RUNBOOK.md. kubernetes-validate has no
/// schema for the Prometheus Operator's CRDs (it only warns that it found none), so
/// these objects are checked here by structure, and by their schema on the day the
/// validator knows it. promtool checks and unit-tests the rules themselves (.ci/run).
#[test]
fn the_service_monitor_and_the_alert_rules_fit_the_manifests() {
    let sm = yaml_doc("deploy/prometheus/servicemonitor.yaml");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["kind"], "ServiceMonitor");
    let endpoints = sm["spec"]["endpoints"].as_array().expect("spec.endpoints");
    assert_eq!(endpoints.len(), 1, "one endpoint: the operations port");
    let port = &endpoints[0]["port"];
    assert_eq!(endpoints[0]["path"], "/metrics");
    for (overlay, expected) in
        [("cronjob", vec!["reverify-serve-metrics"]), ("daemon", vec!["reverify-metrics", "reverify-serve-metrics"])]
    {
        let docs = rendered(overlay);
        let settings = docs.iter().find(|d| d["metadata"]["name"] == "reverify-settings").unwrap();
        let mut scraped = Vec::new();
        for svc in docs.iter().filter(|d| d["kind"] == "Service") {
            let name = svc["metadata"]["name"].as_str().unwrap();
            // the Operator makes a target of each selected Service's port of that name
            let has_port = svc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == *port);
            if !selects(&sm["spec"]["selector"], &svc["metadata"]["labels"]) || !has_port {
                continue;
            }
            let backends = service_backends(&docs, svc, port);
            assert!(!backends.is_empty(), "{overlay}: Service {name} port {port} reaches no pod");
            for (w, c, container_port) in backends {
                let (_, _, ops) = listeners(c, settings);
                let ops =
                    ops.unwrap_or_else(|| panic!("{overlay}: {} serves no operations port", w["metadata"]["name"]));
                assert_eq!(port_of(&ops), container_port, "{overlay}: {name} must reach metrics_listen, /metrics");
            }
            scraped.push(name);
        }
        scraped.sort_unstable();
        assert_eq!(scraped, expected, "{overlay}: the Services the ServiceMonitor scrapes");
    }
    // the job label the rules read (serve's job left out of the missed-run alert,
    // every reverify job in ReverifyDaemonDown) is the Service's name: the
    // Operator's default, which a jobLabel would change
    assert!(sm["spec"]["jobLabel"].is_null(), "the rules expect job = the Service's name");

    // the PrometheusRule is the rules file, rule for rule
    let rule = yaml_doc("deploy/prometheus/alerts.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let plain = yaml_doc("deploy/prometheus/rules.yml");
    assert_eq!(rule["spec"]["groups"], plain["groups"], "alerts.yaml is out of date: run python3 scripts/gen-rules.py");
    let anchors = runbook_anchors();
    let mut alerts = BTreeSet::new();
    for group in plain["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let Some(alert) = r["alert"].as_str() else { continue };
            alerts.insert(alert.to_owned());
            assert!(
                ["critical", "warning", "info"].contains(&r["labels"]["severity"].as_str().unwrap_or_default()),
                "{alert}: a severity label"
            );
            for key in ["summary", "description", "runbook_url"] {
                assert!(r["annotations"][key].as_str().is_some_and(|s| !s.is_empty()), "{alert}: no {key}");
            }
            let url = r["annotations"]["runbook_url"].as_str().unwrap();
            let anchor = url
                .strip_prefix("https://github.com/reverify/reverify/blob/main/deploy/RUNBOOK.md#")
                .unwrap_or_else(|| panic!("{alert}: runbook_url {url} is not into deploy/RUNBOOK.md"));
            assert_eq!(anchor, alert.to_lowercase(), "{alert}: the runbook section is the alert's name");
            assert!(anchors.contains(anchor), "{alert}: deploy/RUNBOOK.md has no section #{anchor}");
        }
    }
    assert!(alerts.len() >= 9, "{alerts:?}");
    // and the promtool unit tests name every alert
    let tests = read("deploy/prometheus/tests.yml");
    for alert in &alerts {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "deploy/prometheus/tests.yml never tests {alert}");
    }

    // the schemas, where kubernetes-validate has them (it has none for these CRDs
    // today, and says so rather than failing)
    let files = [root().join("deploy/prometheus/servicemonitor.yaml"), root().join("deploy/prometheus/alerts.yaml")];
    let out = Command::new(venv_bin().join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if said.contains("Couldn't find schema") {
        eprintln!("note: kubernetes-validate has no schema for the Prometheus Operator's CRDs; checked by structure");
    } else {
        assert!(out.status.success(), "kubernetes-validate --strict failed:\n{said}");
    }
}

// --- README ----------------------------------------------------------------------

#[test]
fn the_deploy_readme_covers_every_way_to_run_and_the_exit_codes() {
    let readme = read("deploy/README.md");
    for section in [
        "From an empty cluster",
        "Kubernetes CronJob",
        "Kubernetes daemon",
        "systemd timer",
        "systemd daemon",
        "cron",
        "Docker",
        "Secrets",
        "Migrations",
        "Scaling",
        "Approvals",
        "Exit codes",
    ] {
        assert!(
            readme.lines().any(|l| l.starts_with("## ") && l.contains(section)),
            "deploy/README.md: no {section} section"
        );
    }
    for code in ["| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |"] {
        assert!(readme.contains(code), "deploy/README.md: exit code row {code}");
    }
    assert!(readme.contains("requests_per_second"), "the scaling note on the rate");
    for topic in [
        "podFailurePolicy",
        "NetworkPolicy",
        "startupProbe",
        "scripts/pin-base-images.sh",
        "CREDENTIALS_DIRECTORY",
        "Ingress",
        "kubectl create -f deploy/kubernetes/jobs/run-campaign.yaml",
        "kubectl port-forward",
        "webhooks/baanx",
        "deploy/prometheus/servicemonitor.yaml",
        "deploy/RUNBOOK.md",
        "deploy/grafana/reverify.json",
    ] {
        assert!(readme.contains(topic), "deploy/README.md does not explain {topic}");
    }
}

/// Issue 16: what is shipped turns four-eyes approval on, and names who applies and
/// who runs, so that a person's approval can never be the applier's own.
#[test]
fn the_shipped_settings_require_approval_and_name_their_actors() {
    let settings = yaml_doc("deploy/kubernetes/base/settings.yaml");
    assert_eq!(settings["data"]["REVERIFY_REQUIRE_APPROVAL"], "true", "settings.yaml");
    for (rel, actor) in [
        ("deploy/kubernetes/base/setup-job.yaml", "deploy:setup-job"),
        ("deploy/kubernetes/base/cronjob.yaml", "scheduler:cronjob"),
        ("deploy/kubernetes/base/deployment.yaml", "scheduler:daemon"),
    ] {
        let doc = yaml_doc(rel);
        let named = pod_specs_of(&doc).iter().any(|spec| {
            spec["containers"].as_array().into_iter().flatten().any(|c| {
                c["env"].as_array().into_iter().flatten().any(|e| e["name"] == "REVERIFY_ACTOR" && e["value"] == actor)
            })
        });
        assert!(named, "{rel}: REVERIFY_ACTOR is not {actor}");
    }
    for (unit, actor) in
        [("reverify.service", "systemd:reverify"), ("reverify-daemon.service", "systemd:reverify-daemon")]
    {
        let text = read(&format!("deploy/systemd/{unit}"));
        assert_eq!(unit_setting(&text, "Environment=REVERIFY_REQUIRE_APPROVAL").as_deref(), Some("true"), "{unit}");
        assert_eq!(unit_setting(&text, "Environment=REVERIFY_ACTOR").as_deref(), Some(actor), "{unit}");
    }
    // and the settings parse as the binary reads them
    let env: std::collections::HashMap<String, String> =
        [("REVERIFY_REQUIRE_APPROVAL".to_owned(), "true".to_owned())].into();
    assert_eq!(reverify::config::Settings::load_from(None, &env).unwrap().require_approval, Some(true));
    let readme = read("deploy/README.md");
    assert!(readme.contains("reverify campaign approve"), "deploy/README.md: how to approve");
}

// --- reverify serve, started as shipped ------------------------------------------

/// One HTTP/1.1 request to 127.0.0.1:`port`: (status, lower-cased head, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: verify.example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    (status, head.to_lowercase(), body.to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Issue 25: `reverify-serve` started as its manifest starts it (its arguments, the
/// settings ConfigMap and its own environment, each secret as a file; only its
/// addresses moved to free local ports and the database to SQLite) serves the paths
/// the Ingress routes on its public port, and nothing of the operations listener
/// there; /metrics and /readyz are on the operations port, the dashboard on its own.
#[test]
fn reverify_serve_started_as_shipped_serves_what_the_ingress_routes_to_it() {
    let serve = yaml_doc("deploy/kubernetes/base/serve.yaml");
    let settings = yaml_doc("deploy/kubernetes/base/settings.yaml");
    let c = &pod_spec(&serve)["containers"][0];
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let (public, ui, ops) = (free_port(), free_port(), free_port());
    let moved = |v: &str| -> String {
        match port_of(v) {
            8080 => format!("127.0.0.1:{public}"),
            8081 => format!("127.0.0.1:{ui}"),
            9090 => format!("127.0.0.1:{ops}"),
            other => panic!("{v}: an unexpected port {other}"),
        }
    };
    let mut env: BTreeMap<String, String> =
        serde_json::from_value::<BTreeMap<String, String>>(settings["data"].clone()).unwrap();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = if e["valueFrom"]["secretKeyRef"]["key"] == "database_url" {
            format!("sqlite://{}", dir.path().join("reverify.db").display())
        } else if name.ends_with("_LISTEN") {
            moved(e["value"].as_str().unwrap())
        } else if let Some(key) = e["value"].as_str().and_then(|v| v.strip_prefix("/run/secrets/reverify/")) {
            let content = match key {
                "token_key" | "webhook_key" => reverify::crypto::TokenCipher::generate_key(),
                "ui_users" => {
                    let mut hash = Command::new(env!("CARGO_BIN_EXE_reverify"))
                        .args(["ui", "hash-password"])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .unwrap();
                    use std::io::Write as _;
                    hash.stdin.take().unwrap().write_all(b"correct horse battery staple\n").unwrap();
                    let out = hash.wait_with_output().unwrap();
                    assert!(out.status.success());
                    format!("alice:approver:{}", String::from_utf8(out.stdout).unwrap().trim())
                }
                other => format!("{other}-value"),
            };
            std::fs::write(secrets.join(key), content).unwrap();
            secrets.join(key).display().to_string()
        } else {
            e["value"].as_str().unwrap_or_else(|| panic!("{name}: neither a value nor the database_url")).to_owned()
        };
        env.insert(name, value);
    }
    let args: Vec<String> = serde_json::from_value::<Vec<String>>(c["args"].clone())
        .unwrap()
        .into_iter()
        .map(|a| if a.starts_with("0.0.0.0:") { moved(&a) } else { a })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_reverify"))
        .args(&args)
        .env_clear()
        .envs(&env)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while [public, ui, ops].iter().any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err()) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("reverify {} exited {status}:\n{err}", args.join(" "));
        }
        assert!(started.elapsed() < Duration::from_secs(60), "reverify serve did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let check = || {
        // the public port: the Ingress's two paths, answered by reverify's routes
        let (status, head, _) = http(public, "GET", "/v/no-such-link");
        assert!(status == 404 && head.contains("content-type: text/html"), "GET /v/…: {status} {head}");
        let (status, _, _) = http(public, "POST", reverify::webhooks::WEBHOOK_PATH);
        assert_eq!(status, 401, "an unsigned webhook is refused by the receiver, not missing");
        for path in ["/metrics", "/readyz"] {
            assert_eq!(http(public, "GET", path).0, 404, "{path} on the public port");
        }
        // the operations port: the probes and Prometheus, and never the webhook
        assert_eq!(http(ops, "GET", "/readyz").0, 200);
        let (status, _, body) = http(ops, "GET", "/metrics");
        assert!(status == 200 && body.contains("reverify_"), "/metrics: {status}");
        assert_eq!(http(ops, "POST", reverify::webhooks::WEBHOOK_PATH).0, 404, "the webhook on the operations port");
        // the dashboard: its login, on its own port only
        let (status, _, _) = http(ui, "GET", "/");
        assert!([200, 302, 303, 307].contains(&status), "the dashboard answers {status}");
        assert_eq!(http(public, "GET", "/login").0, 404, "the dashboard on the public port");
    };
    let result = std::panic::catch_unwind(check);
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(status.success(), "reverify serve stopped on SIGTERM with {status}");
}

/// Issue 25: the overlay deploy/README.md's walkthrough writes ("From an empty
/// cluster to a first campaign", step 2) renders with `kubectl kustomize` (its
/// namespace and JSON patches are beyond scripts/render-kustomize.py) and
/// validates, with the host, public_url, trusted proxies and image it sets. Where
/// kubectl is missing, the walkthrough's file is still checked to be there.
#[test]
fn the_walkthroughs_overlay_renders_and_validates() {
    let readme = read("deploy/README.md");
    let start = "   cat > deploy/kubernetes/overlays/prod/kustomization.yaml <<'EOF'\n";
    let body = readme.split(start).nth(1).expect("the walkthrough writes its overlay");
    let body = body.split("\n   EOF\n").next().unwrap();
    let kustomization: String = body.lines().map(|l| format!("{}\n", l.strip_prefix("   ").unwrap_or(l))).collect();
    assert!(kustomization.contains("../cronjob"), "{kustomization}");
    let dir = tempfile::tempdir().unwrap();
    // a copy of deploy/kubernetes with the overlay where the walkthrough puts it
    let copy = dir.path().join("kubernetes");
    let status = Command::new("cp").arg("-r").arg(root().join("deploy/kubernetes")).arg(&copy).status().unwrap();
    assert!(status.success());
    std::fs::create_dir(copy.join("overlays/prod")).unwrap();
    std::fs::write(copy.join("overlays/prod/kustomization.yaml"), &kustomization).unwrap();
    let out = match Command::new("kubectl").arg("kustomize").arg(copy.join("overlays/prod")).output() {
        Err(_) => {
            eprintln!("note: kubectl not found; the walkthrough's overlay is not rendered");
            return;
        }
        Ok(out) => out,
    };
    assert!(out.status.success(), "kubectl kustomize prod: {}", String::from_utf8_lossy(&out.stderr));
    let file = dir.path().join("prod.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let v = kubernetes_validate(std::slice::from_ref(&file));
    assert!(v.status.success(), "the walkthrough's overlay renders invalid:\n{}", String::from_utf8_lossy(&v.stdout));
    let docs = yaml_docs(&file);
    let settings = docs.iter().find(|d| d["metadata"]["name"] == "reverify-settings").unwrap();
    let public_url = url::Url::parse(settings["data"]["REVERIFY_PUBLIC_URL"].as_str().unwrap()).unwrap();
    let ingress = docs.iter().find(|d| d["kind"] == "Ingress").unwrap();
    assert_eq!(ingress["spec"]["rules"][0]["host"].as_str(), public_url.host_str());
    assert_eq!(ingress["spec"]["tls"][0]["hosts"][0].as_str(), public_url.host_str());
    assert_ne!(public_url.host_str(), Some("verify.example.com"), "the walkthrough sets its own host");
    assert_ne!(settings["data"]["REVERIFY_TRUSTED_PROXIES"], "10.0.0.0/8", "the walkthrough sets its pod network");
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], "reverify", "{}", d["metadata"]["name"]);
        for spec in pod_specs_of(d) {
            assert!(spec["containers"][0]["image"].as_str().unwrap().starts_with("registry.example.com/reverify:"));
        }
    }
}
