//! HTTPS end to end: `dirigent serve` with a certificate issued by a private CA, the CLI
//! trusting that CA, and the local agent reaching its orchestrator over `wss`.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;

use crate::support::{ServerProcess, ok, run, run_with_input};

const PASSWORD: &str = "tls-password-123";

/// Writes `ca.pem`, and `cert.pem` + `key.pem` for localhost and 127.0.0.1 issued by it.
fn private_ca(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

#[test]
fn the_cli_and_the_local_agent_work_over_https() {
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let server = ServerProcess::start(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let login = |extra: &[&str]| {
        let mut args = vec![
            "login",
            "--url",
            &server.url,
            "--username",
            "admin",
            "--password-stdin",
        ];
        args.extend_from_slice(extra);
        run_with_input(server.cli(&args), &format!("{PASSWORD}\n"))
    };

    // A certificate from an unknown CA is refused, and says so.
    let refused = login(&[]);
    assert_eq!(refused.status.code(), Some(7));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("certificate"), "{message}");

    // Trusting the CA at login keeps trusting it for later commands.
    let ca = dir.path().join("ca.pem");
    ok(login(&["--ca-file", ca.to_str().unwrap()]));
    ok(run(server.cli(&[
        "robot",
        "create",
        "hello",
        "--",
        "sh",
        "-c",
        "echo over tls",
    ])));
    let started: Value =
        serde_json::from_str(&ok(run(server.cli(&["run", "start", "hello", "--json"])))).unwrap();
    let id = started["id"].as_str().unwrap();
    let ended: Value = serde_json::from_str(&ok(run(server.cli(&[
        "run",
        "wait",
        id,
        "--state",
        "succeeded",
        "--timeout",
        "30",
        "--json",
    ]))))
    .unwrap();
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let logs = ok(run(server.cli(&["run", "logs", id])));
    assert!(logs.contains("over tls"), "{logs}");
}

/// `dirigent serve` in `dir` with `args`, to see it refuse them.
fn serve_in(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut command = crate::support::dirigent(dir);
    command
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args);
    run(command)
}

#[test]
fn half_a_tls_setting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve_in(dir.path(), &["--tls-cert", "cert.pem"]);
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("without tls_key"), "{message}");

    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let out = serve_in(
        dir.path(),
        &["--tls-cert", "cert.pem", "--tls-key", "key.pem"],
    );
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("cert.pem"), "{message}");
}
