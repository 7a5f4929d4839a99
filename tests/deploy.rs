//! The files under deploy/ checked offline: the Kubernetes manifests against the
//! API schemas (`kubernetes-validate --strict`, installed by
//! scripts/install-test-deps.sh), the house rules every workload must follow, the
//! Dockerfile's paths and binary, the commands every deploy file runs, and the
//! systemd units (`systemd-analyze verify`, when present).
//!
//! YAML is read through the Python that kubernetes-validate brings (PyYAML), so
//! that the test parses manifests the way the validator does and the crate needs
//! no YAML dependency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    assert!(text.contains("  concurrencyPolicy: Forbid\n"));
    std::fs::write(&broken, text.replace("  concurrencyPolicy: Forbid\n", "  concurrencyPolicyy: Forbid\n")).unwrap();
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

    // Rendering needs kustomize (kubectl's); validation above does not.
    let overlays = [("cronjob", "CronJob", "Deployment"), ("daemon", "Deployment", "CronJob")];
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        eprintln!("note: kubectl not found; the overlays were not rendered (the resources were validated one by one)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (overlay, keeps, drops) in overlays {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join("deploy/kubernetes/overlays").join(overlay))
            .output()
            .unwrap();
        assert!(out.status.success(), "kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
        let rendered = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&rendered, &out.stdout).unwrap();
        let kinds: Vec<String> =
            yaml_docs(&rendered).iter().map(|d| d["kind"].as_str().unwrap_or_default().to_owned()).collect();
        assert!(kinds.iter().any(|k| k == keeps) && !kinds.iter().any(|k| k == drops), "{overlay}: {kinds:?}");
        assert!(kinds.iter().any(|k| k == "Job") && kinds.iter().any(|k| k == "ConfigMap"), "{overlay}: {kinds:?}");
        let v = kubernetes_validate(&[rendered]);
        assert!(v.status.success(), "{overlay} renders invalid:\n{}", String::from_utf8_lossy(&v.stdout));
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

    for rel in ["cronjob.yaml", "deployment.yaml", "setup-job.yaml"] {
        let doc = yaml_doc(&format!("deploy/kubernetes/base/{rel}"));
        let pod = pod_spec(&doc);
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{rel}");
        assert_eq!(psc["runAsUser"], 10001, "{rel}: the image's uid");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{rel}");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30, "{rel}");
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
                }
                assert!(e["value"].as_str().is_none_or(|v| !v.contains("REPLACE_ME")), "{rel}: a secret inline");
            }
        }
    }

    let cron = yaml_doc("deploy/kubernetes/base/cronjob.yaml");
    let spec = &cron["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert!(spec["startingDeadlineSeconds"].is_u64() && spec["timeZone"].is_string());
    assert!(spec["jobTemplate"]["spec"]["activeDeadlineSeconds"].is_u64());
    assert!(spec["jobTemplate"]["spec"]["backoffLimit"].is_u64());
    assert_eq!(pod_spec(&cron)["containers"][0]["args"], serde_json::json!(["run", "--due", "--log-format", "json"]));

    let daemon = yaml_doc("deploy/kubernetes/base/deployment.yaml");
    assert_eq!(daemon["spec"]["replicas"], 1);
    let c = &pod_spec(&daemon)["containers"][0];
    assert_eq!(c["ports"][0], serde_json::json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"}));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let listen = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "REVERIFY_METRICS_LISTEN").unwrap();
    assert!(listen["value"].as_str().unwrap().ends_with(":9090"));
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
    let froms: Vec<&String> = steps.iter().filter(|(op, _)| op == "FROM").map(|(_, a)| a).collect();
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
            // the builder stage: from the first FROM to the next
            let builder = dockerfile.split("FROM ").nth(1).unwrap_or_default();
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
    for rel in ["cronjob.yaml", "deployment.yaml", "setup-job.yaml"] {
        let doc = yaml_doc(&format!("deploy/kubernetes/base/{rel}"));
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
        // every REVERIFY_*_FILE points into the credentials directory, loaded by name
        for line in text.lines().filter(|l| l.starts_with("Environment=REVERIFY_") && l.contains("_FILE=")) {
            let cred = line.split("_FILE=%d/").nth(1).unwrap_or_else(|| panic!("{unit}: {line} is not under %d/"));
            assert!(text.contains(&format!("LoadCredential={cred}:")), "{unit}: {cred} is not loaded");
        }
    }

    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("note: systemd-analyze not found; the units were not verified");
        return;
    };
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
    let out = Command::new("systemd-analyze").arg("verify").args(&paths).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // without a running systemd (a container), verify may only complain about that
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("System has not been booted with systemd") && !l.contains("Failed to connect to bus"))
        .collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify:\n{stderr}");
}

// --- README ----------------------------------------------------------------------

#[test]
fn the_deploy_readme_covers_every_way_to_run_and_the_exit_codes() {
    let readme = read("deploy/README.md");
    for section in [
        "Kubernetes CronJob",
        "Kubernetes daemon",
        "systemd timer",
        "systemd daemon",
        "cron",
        "Docker",
        "Secrets",
        "Migrations",
        "Scaling",
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
}
