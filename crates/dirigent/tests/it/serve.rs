//! `dirigent serve`: the first start, settings from file, environment and flags, and clear
//! one-line errors for bad settings.

use std::process::Output;

use crate::support::{ServerProcess, dirigent, fails, ok, run, stderr};

#[test]
fn the_first_start_prints_a_password_that_logs_in() {
    let server = ServerProcess::start(&[], &[]);
    assert!(
        server.first_output[2].starts_with("Dirigent "),
        "{:?}",
        server.first_output
    );
    let password = server.first_output[0]
        .strip_prefix("Created the first user: admin, password: ")
        .unwrap_or_else(|| panic!("{:?}", server.first_output))
        .to_owned();
    assert!(
        server.dir.path().join("dirigent-data/dirigent.db").exists(),
        "the default data directory"
    );

    server.login(&password);
    let whoami = ok(run(server.cli(&["whoami", "--json"])));
    assert!(whoami.contains("\"username\": \"admin\""), "{whoami}");

    let (status, stderr) = server.stop();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status:?} {stderr}"
    );
    assert!(stderr.contains("stopping"), "{stderr}");
}

#[test]
fn the_admin_password_comes_from_the_environment() {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", "from-the-env-1")]);
    assert_eq!(server.first_output.len(), 1);
    server.login("from-the-env-1");
}

#[test]
fn settings_come_from_a_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("dirigent.toml");
    let data = dir.path().join("elsewhere");
    std::fs::write(
        &settings,
        format!("listen = \"127.0.0.1:1\"\ndata = \"{}\"\nadmin_password = \"from-the-file-1\"\nsession_ttl_seconds = 600\n", data.display()),
    )
    .unwrap();
    // The flag --listen 127.0.0.1:0 (given by the helper) wins over the file's port 1.
    let server = ServerProcess::start(&["--config", settings.to_str().unwrap()], &[]);
    assert_eq!(
        server.first_output.len(),
        1,
        "the file's password is not printed"
    );
    assert!(
        server.first_output[0].contains(&format!("data: {}", data.display())),
        "{:?}",
        server.first_output
    );
    assert!(data.join("dirigent.db").exists());
    server.login("from-the-file-1");
    drop(server);
    // The local agent lives in the data directory the file named.
    crate::support::stop_agent(&data.join("local-agent"));
}

fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = dirigent(&dir.path().join("config"));
    command
        .current_dir(dir.path())
        .arg("serve")
        .args(args)
        .envs(env.iter().copied());
    run(command)
}

#[test]
fn bad_settings_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("bad.toml");
    std::fs::write(&settings, "lisen = \"127.0.0.1:9\"\n").unwrap();
    fails(
        serve(&["--config", settings.to_str().unwrap()], &[]),
        1,
        "unknown field `lisen`",
    );
    fails(
        serve(&["--config", "/nonexistent/dirigent.toml"], &[]),
        1,
        "reading settings file /nonexistent/dirigent.toml",
    );
    fails(
        serve(&["--listen", "localhost"], &[]),
        1,
        "listen address \"localhost\" is not ADDRESS:PORT",
    );
    fails(
        serve(&[], &[("DIRIGENT_LISTEN", "1.2.3.4")]),
        1,
        "listen address \"1.2.3.4\"",
    );
    fails(
        serve(
            &["--listen", "127.0.0.1:0"],
            &[("DIRIGENT_DATABASE_URL", "mysql://x")],
        ),
        1,
        "must start with sqlite:// or postgres://",
    );
    fails(
        serve(
            &["--listen", "127.0.0.1:0"],
            &[(
                "DIRIGENT_DATABASE_URL",
                "postgres://dirigent:hunter2@127.0.0.1:1/x",
            )],
        ),
        1,
        "database postgres://dirigent:***@127.0.0.1:1/x: cannot connect",
    );
    fails(
        serve(
            &["--listen", "127.0.0.1:0"],
            &[("DIRIGENT_ADMIN_PASSWORD", "short")],
        ),
        1,
        "admin password: must have at least 8 characters",
    );
}

#[test]
fn a_port_in_use_is_a_one_line_error() {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", "password-123")]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let output = serve(&["--listen", &addr], &[]);
    fails(
        output,
        1,
        &format!("cannot listen on {addr}: Address already in use"),
    );
}

#[test]
fn no_secret_reaches_the_error_output() {
    let output = serve(
        &["--listen", "127.0.0.1:0"],
        &[(
            "DIRIGENT_DATABASE_URL",
            "postgres://u:topsecret@127.0.0.1:1/x",
        )],
    );
    assert!(!stderr(&output).contains("topsecret"));
}
