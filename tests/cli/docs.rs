//! `reverify completions SHELL` and `reverify man [COMMAND…]`: generated from the
//! command line itself, printed to standard output, and needing no settings.

use std::process::{Command, Output};

fn reverify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reverify"))
        .args(args)
        .env_clear()
        // a settings file that does not exist: these commands must not read it
        .env("REVERIFY_CONFIG", "/nonexistent/reverify.toml")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).expect("UTF-8")
}

/// The commands `reverify --help` lists (but `help`).
fn commands() -> Vec<String> {
    let help = stdout(&reverify(&["--help"]));
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for needed in ["run", "daemon", "campaign", "users", "completions", "man"] {
        assert!(listed.iter().any(|c| c == needed), "{needed} not in {listed:?}");
    }
    listed
}

#[test]
fn completions_for_every_shell_name_every_command() {
    let commands = commands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&reverify(&["completions", shell]));
        assert!(script.len() > 1000, "{shell}: {script}");
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completions do not mention {c}");
        }
    }
    let bash = stdout(&reverify(&["completions", "bash"]));
    assert!(bash.contains("complete -F _reverify") && bash.contains("reverify__subcmd__campaign"), "{bash}");
    // the nested commands and the flags are completed too
    for word in ["retry-failed", "--max-duration", "--due"] {
        assert!(bash.contains(word), "bash completions do not mention {word}");
    }

    let o = reverify(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("possible values: bash, elvish, fish, powershell, zsh"));
}

#[test]
fn man_prints_roff_pages() {
    let page = stdout(&reverify(&["man"]));
    let th = page.lines().find(|l| l.starts_with(".TH ")).expect(".TH line");
    assert!(th.starts_with(".TH reverify 1 ") && th.contains(env!("CARGO_PKG_VERSION")), "{th}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.lines().any(|l| l == section), "no {section} in\n{page}");
    }
    // every command is listed, with the page `reverify man COMMAND` prints
    for c in commands() {
        let escaped = format!("reverify\\-{}(1)", c.replace('-', "\\-"));
        assert!(page.contains(&escaped), "the man page does not list {escaped}");
        let sub = stdout(&reverify(&["man", &c]));
        assert!(sub.contains(&format!(".TH reverify-{c} 1 ")), "reverify man {c}:\n{sub}");
    }
    let nested = stdout(&reverify(&["man", "campaign", "apply"]));
    assert!(nested.contains(".TH reverify-campaign-apply 1 ") && nested.contains(".SH SYNOPSIS"), "{nested}");

    assert!(page.contains("Exit codes:") && nested.contains("Exit codes:"), "the exit codes in the man pages");
    let o = reverify(&["man", "no-such-command"]);
    assert_eq!(o.status.code(), Some(2), "an unknown command is a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no command"), "{o:?}");
}

#[test]
fn benchmarks_are_not_product_commands() {
    let help = stdout(&reverify(&["--help"]));
    assert!(!help.lines().any(|l| l.trim_start().starts_with("bench")), "a bench line in\n{help}");
    assert!(!commands().iter().any(|c| c.starts_with("bench")));
    for c in ["bench", "bench-report"] {
        let o = reverify(&[c]);
        assert_eq!(o.status.code(), Some(2), "reverify {c} is a usage error");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("unrecognized subcommand '{c}'")), "reverify {c}: {err}");
        let o = reverify(&["man", c]);
        assert_eq!(o.status.code(), Some(2), "reverify man {c}");
    }
}
