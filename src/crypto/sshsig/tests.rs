//! Interoperability with OpenSSH itself: keys made by `ssh-keygen`, signatures
//! checked by `ssh-keygen -Y verify` and made by `ssh-keygen -Y sign`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn keygen(dir: &Path, name: &str, kind: &[&str]) -> PathBuf {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name])
        .args(kind)
        .arg("-f")
        .arg(&key)
        .status()
        .expect("ssh-keygen is installed (scripts/install-test-deps.sh)");
    assert!(st.success());
    key
}

fn public(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_owned()
}

#[test]
fn ours_verify_with_ssh_keygen_and_theirs_with_ours() {
    let dir = tempfile::tempdir().unwrap();
    for (name, kind) in [
        ("ed", &["-t", "ed25519"][..]),
        ("p256", &["-t", "ecdsa", "-b", "256"]),
        ("p384", &["-t", "ecdsa", "-b", "384"]),
    ] {
        let key = keygen(dir.path(), name, kind);
        let allowed = dir.path().join(format!("{name}.allowed"));
        std::fs::write(&allowed, format!("alice@example.com namespaces=\"reverify\" {}\n", public(&key))).unwrap();
        let msg = format!("the message for {name}\n");
        // ours, checked by ssh-keygen
        let sig = sign(&key, NAMESPACE, msg.as_bytes()).unwrap();
        let sig_file = dir.path().join(format!("{name}.sig"));
        std::fs::write(&sig_file, &sig).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "reverify", "-I", "alice@example.com", "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(&sig_file)
            .stdin(
                std::fs::File::open({
                    let m = dir.path().join(format!("{name}.msg"));
                    std::fs::write(&m, &msg).unwrap();
                    m
                })
                .unwrap(),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        // theirs, checked by ours
        let msg_file = dir.path().join(format!("{name}.msg"));
        let st = Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", "reverify", "-f"])
            .arg(&key)
            .arg(&msg_file)
            .status()
            .unwrap();
        assert!(st.success());
        let theirs = std::fs::read_to_string(msg_file.with_extension("msg.sig")).unwrap();
        let signers = Signers::load(&allowed).unwrap();
        assert_eq!(verify(&signers, NAMESPACE, msg.as_bytes(), &theirs).unwrap(), "alice@example.com");
        // a changed message, another namespace, another key's file: refused
        assert_eq!(verify(&signers, NAMESPACE, b"other", &theirs), Err(SshSigError::Mismatch));
        assert!(matches!(verify(&signers, "git", msg.as_bytes(), &theirs), Err(SshSigError::Namespace { .. })));
        // a single public key as the signers: the principal is its fingerprint
        let one = Signers::load(&key.with_extension("pub")).unwrap();
        assert!(verify(&one, NAMESPACE, msg.as_bytes(), &sig).unwrap().starts_with("SHA256:"));
    }
}

#[test]
fn allowed_signers_namespaces_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(dir.path(), "a", &["-t", "ed25519"]);
    let b = keygen(dir.path(), "b", &["-t", "ed25519"]);
    let allowed = dir.path().join("allowed");
    std::fs::write(
        &allowed,
        format!("# approvers\n\nalice namespaces=\"git\" {}\n\"bob,robert\" {}\n", public(&a), public(&b)),
    )
    .unwrap();
    let signers = Signers::load(&allowed).unwrap();
    let sig_a = sign(&a, NAMESPACE, b"m").unwrap();
    // alice's key is listed for git only
    let e = verify(&signers, NAMESPACE, b"m", &sig_a).unwrap_err();
    assert!(matches!(e, SshSigError::UnknownSigner { .. }), "{e}");
    // bob's key has two principals: which one would be recorded is not clear
    let sig_b = sign(&b, NAMESPACE, b"m").unwrap();
    assert!(matches!(verify(&signers, NAMESPACE, b"m", &sig_b), Err(SshSigError::Ambiguous { .. })));
    // a bad line is named
    std::fs::write(&allowed, format!("alice {}\nbob ssh-ed25519 notbase64\n", public(&a))).unwrap();
    let e = Signers::load(&allowed).unwrap_err().to_string();
    assert!(e.contains("allowed:2:"), "{e}");
    std::fs::write(&allowed, format!("alice cert-authority {}\n", public(&a))).unwrap();
    let e = Signers::load(&allowed).unwrap_err().to_string();
    assert!(e.contains("allowed:1:") && e.contains("cert-authority"), "{e}");
    assert!(matches!(verify(&signers, NAMESPACE, b"m", "not a signature"), Err(SshSigError::Armor(_))));
}

#[test]
fn a_passphrase_protected_key_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("locked");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret passphrase", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let e = sign(&key, NAMESPACE, b"m").unwrap_err().to_string();
    assert!(e.contains("passphrase") && e.contains("ssh-agent"), "{e}");
}

#[test]
fn a_public_key_signs_through_ssh_agent() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let sock = dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock).spawn().unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let add = Command::new("ssh-add").arg(&key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let result = sign_with_agent(&key.with_extension("pub"), NAMESPACE, b"agent message", Some(&sock));
    agent.kill().ok();
    agent.wait().ok();
    let sig = result.unwrap();
    let one = Signers::load(&key.with_extension("pub")).unwrap();
    assert!(verify(&one, NAMESPACE, b"agent message", &sig).is_ok());
}
