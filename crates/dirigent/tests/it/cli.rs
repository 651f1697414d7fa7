//! The CLI against a real server: the newcomer's tour, files, tokens and exit codes.

use crate::support::{ServerProcess, fails, ok, run, run_with_input};

const PASSWORD: &str = "tour-password-1";

fn logged_in_server() -> ServerProcess {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    server.login(PASSWORD);
    server
}

#[test]
fn the_tour_creates_shows_updates_and_removes_a_robot() {
    let server = logged_in_server();
    let cli = |args: &[&str]| run(server.cli(args));

    let created = ok(cli(&[
        "robot",
        "create",
        "hello",
        "--env",
        "GREETING=hi",
        "--max-duration",
        "60",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    ]));
    assert!(
        created.contains("command          sh -c 'echo $GREETING'"),
        "{created}"
    );
    assert!(created.contains("max duration     60 s"), "{created}");

    let listed = ok(cli(&["robot", "ls"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "AGENT", "PARALLEL", "RESTART", "COMMAND"]
    );
    assert!(lines[1].starts_with("hello  any"), "{listed}");

    let updated = ok(cli(&[
        "robot",
        "update",
        "hello",
        "--max-parallel",
        "4",
        "--unset-env",
        "GREETING",
        "--no-max-duration",
        "--restart-policy",
        "on-failure",
    ]));
    assert!(updated.contains("max parallel     4"), "{updated}");
    assert!(updated.contains("env              (none)"), "{updated}");
    assert!(updated.contains("max duration     none"), "{updated}");
    assert!(updated.contains("restart policy   on_failure"), "{updated}");
    assert!(
        updated.contains("command          sh -c 'echo $GREETING'"),
        "flags leave other fields alone: {updated}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(cli(&["robot", "show", "hello", "--json"]))).unwrap();
    assert_eq!(json["max_parallel"], 4);

    ok(cli(&["robot", "rm", "hello"]));
    fails(
        cli(&["robot", "show", "hello"]),
        4,
        "no robot named \"hello\"",
    );
    assert_eq!(ok(cli(&["robot", "ls", "--json"])).trim(), "[]");
}

#[test]
fn a_reader_gone_away_ends_the_cli_quietly() {
    let server = logged_in_server();
    for args in [&["robot", "ls"][..], &["node", "ls", "--json"], &["whoami"]] {
        // `dirigent robot ls | head -0`: the reader is gone before anything is written.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let done = server.cli(args).stdout(writer).output().unwrap();
        assert_eq!(done.status.code(), Some(0), "{args:?}: {done:?}");
        assert_eq!(crate::support::stderr(&done), "", "{args:?}");
    }
}

#[test]
fn robots_come_from_toml_and_json_files() {
    let server = logged_in_server();
    let dir = server.dir.path();
    std::fs::write(
        dir.join("invoices.toml"),
        "name = \"invoices\"\nargv = [\"python3\", \"-u\", \"invoices.py\"]\nagent = \"os=linux\"\nrestart_policy = \"always\"\n\n[crash_loop]\nmax_starts = 2\nwindow_seconds = 30\n",
    )
    .unwrap();
    let created = ok(run(server.cli(&[
        "robot",
        "create",
        "--file",
        "invoices.toml",
        "--max-parallel",
        "2",
    ])));
    assert!(created.contains("agent            os=linux"), "{created}");
    assert!(
        created.contains("max parallel     2"),
        "flags win over the file: {created}"
    );
    assert!(
        created.contains("crash loop       more than 2 starts in 30 s"),
        "{created}"
    );

    std::fs::write(
        dir.join("replace.json"),
        r#"{"argv": ["python3", "v2.py"], "description": "second version"}"#,
    )
    .unwrap();
    let updated = ok(run(server.cli(&[
        "robot",
        "update",
        "invoices",
        "--file",
        "replace.json",
    ])));
    assert!(
        updated.contains("description      second version"),
        "{updated}"
    );
    assert!(
        updated.contains("agent            any"),
        "a file replaces the whole definition: {updated}"
    );

    std::fs::write(
        dir.join("typo.toml"),
        "name = \"x\"\nargv = [\"a\"]\nmax_paralel = 2\n",
    )
    .unwrap();
    fails(
        run(server.cli(&["robot", "create", "--file", "typo.toml"])),
        1,
        "unknown field `max_paralel`",
    );
}

#[test]
fn errors_have_readable_messages_and_distinct_exit_codes() {
    let server = logged_in_server();
    let cli = |args: &[&str]| run(server.cli(args));
    ok(cli(&["robot", "create", "dup", "--", "true"]));
    fails(
        cli(&["robot", "create", "dup", "--", "true"]),
        5,
        "a robot named \"dup\" exists already",
    );
    fails(
        cli(&["robot", "create", "Bad", "--", "true"]),
        6,
        "name: must start with a lowercase letter or a digit",
    );
    fails(
        cli(&[
            "robot",
            "create",
            "ok",
            "--working-dir",
            "rel",
            "--",
            "true",
        ]),
        6,
        "working_dir: must be an absolute path",
    );
    fails(
        cli(&["robot", "create", "noargv"]),
        1,
        "give the program to run after `--`",
    );
    fails(
        cli(&["robot", "create", "x", "--env", "NOEQUALS", "--", "true"]),
        1,
        "--env takes KEY=VALUE",
    );
    fails(
        cli(&["robot", "show", "../../etc"]),
        4,
        "no robot named \"../../etc\"",
    );
    fails(
        cli(&["robot", "ls", "--token", "dgt_wrong"]),
        3,
        "log in with `dirigent login`",
    );
    fails(
        cli(&["robot", "ls", "--url", "http://127.0.0.1:1"]),
        7,
        "cannot reach the server at http://127.0.0.1:1",
    );
    fails(
        cli(&["robot", "ls", "--url", "ftp://x"]),
        6,
        "must start with http:// or https://",
    );
    let usage = cli(&["robot", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
    let login = server.cli(&[
        "login",
        "--url",
        &server.url,
        "--username",
        "admin",
        "--password-stdin",
    ]);
    fails(
        run_with_input(login, "wrong-password\n"),
        3,
        "wrong username or password",
    );
}

#[test]
fn api_tokens_work_from_the_environment_and_can_be_revoked() {
    let server = logged_in_server();
    let secret = ok(run(server.cli(&[
        "token",
        "create",
        "ci",
        "--expires-in",
        "30d",
    ])))
    .trim()
    .to_owned();
    assert!(secret.starts_with("dgt_"), "{secret}");
    let listed = ok(run(server.cli(&["token", "ls"])));
    assert!(listed.lines().nth(1).unwrap().contains(" ci "), "{listed}");
    let id = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    ok(run(server.cli(&["logout"])));
    fails(
        run(server.cli(&["robot", "ls", "--url", &server.url])),
        3,
        "authentication required",
    );

    let mut with_token = server.cli(&["whoami", "--json", "--url", &server.url]);
    with_token.env("DIRIGENT_TOKEN", &secret);
    assert!(ok(run(with_token)).contains("\"credential\": \"api_token\""));

    let mut revoke = server.cli(&["token", "revoke", &id, "--url", &server.url]);
    revoke.env("DIRIGENT_TOKEN", &secret);
    ok(run(revoke));
    let mut refused = server.cli(&["robot", "ls", "--url", &server.url]);
    refused.env("DIRIGENT_TOKEN", &secret);
    fails(run(refused), 3, "unknown, expired or revoked");
    let usage = run(server.cli(&["token", "create", "x", "--expires-in", "5y"]));
    assert_eq!(usage.status.code(), Some(2));
    assert!(crate::support::stderr(&usage).contains("the unit must be d, h, m or s"));
}

#[test]
fn the_audit_log_shows_changes_and_denials() {
    let server = logged_in_server();
    ok(run(
        server.cli(&["robot", "create", "audited", "--", "true"])
    ));
    let bad_token = run(server.cli(&["robot", "rm", "audited", "--token", "dgt_wrong"]));
    assert_eq!(bad_token.status.code(), Some(3));
    let table = ok(run(server.cli(&["audit", "--limit", "5"])));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("AT"), "{table}");
    assert!(
        lines[1].contains("anonymous")
            && lines[1].contains("denied 401")
            && lines[1].contains("DELETE /api/v1/robots/{name}"),
        "{table}"
    );
    assert!(
        lines[1].contains("127.0.0.1"),
        "the caller's address: {table}"
    );
    assert!(
        lines[2].contains("user:admin")
            && lines[2].contains("allowed 201")
            && lines[2].contains("POST /api/v1/robots"),
        "{table}"
    );
    let denied: serde_json::Value =
        serde_json::from_str(&ok(run(server.cli(&["audit", "--denied", "--json"])))).unwrap();
    assert_eq!(denied.as_array().unwrap().len(), 1, "{denied}");
}

#[test]
fn users_and_roles_from_the_command_line() {
    let server = logged_in_server();
    let cli = |args: &[&str]| run(server.cli(args));
    ok(cli(&[
        "role",
        "create",
        "fin",
        "--permission",
        "robots:read:finance-*",
        "--description",
        "finance readers",
    ]));
    fails(
        cli(&["role", "create", "odd", "--permission", "robots:fly"]),
        6,
        "\"fly\" is not an action on robots",
    );
    let create = server.cli(&["user", "create", "fin", "--role", "fin", "--password-stdin"]);
    ok(run_with_input(create, "fin-password-1\n"));
    ok(cli(&["robot", "create", "finance-a", "--", "true"]));
    ok(cli(&["robot", "create", "hr-b", "--", "true"]));

    let other = server.dir.path().join("fin-config");
    let as_fin = |args: &[&str]| {
        let mut command = server.cli(args);
        command.env("DIRIGENT_CONFIG_DIR", &other);
        command
    };
    let login = as_fin(&[
        "login",
        "--url",
        &server.url,
        "--username",
        "fin",
        "--password-stdin",
    ]);
    ok(run_with_input(login, "fin-password-1\n"));
    let visible = ok(run(as_fin(&["robot", "ls"])));
    assert!(
        visible.contains("finance-a") && !visible.contains("hr-b"),
        "{visible}"
    );
    fails(
        run(as_fin(&["robot", "rm", "finance-a"])),
        3,
        "fin may not edit robots named \"finance-a\"",
    );

    let users = ok(cli(&["user", "ls"]));
    assert!(
        users
            .lines()
            .any(|line| line.starts_with("fin ") && line.contains("enabled")),
        "{users}"
    );
    let roles = ok(cli(&["role", "ls"]));
    assert!(
        roles
            .lines()
            .any(|line| line.starts_with("fin ") && line.contains("robots:read:finance-*")),
        "{roles}"
    );
    ok(cli(&["user", "update", "fin", "--disable"]));
    fails(
        run(as_fin(&["robot", "ls"])),
        3,
        "unknown, expired or revoked",
    );
    ok(cli(&["user", "rm", "fin"]));
    fails(cli(&["user", "show", "fin"]), 4, "no user named \"fin\"");
}

#[test]
fn triggers_and_calendars_from_the_command_line() {
    let server = logged_in_server();
    let cli = |args: &[&str]| run(server.cli(args));
    ok(cli(&["robot", "create", "nightly", "--", "true"]));
    let holidays = server.dir.path().join("holidays.ics");
    std::fs::write(
        &holidays,
        "BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART;VALUE=DATE:20270329\nEND:VEVENT\nEND:VCALENDAR\n",
    )
    .unwrap();
    ok(cli(&[
        "calendar",
        "create",
        "office",
        "--import",
        holidays.to_str().unwrap(),
    ]));
    let created: serde_json::Value = serde_json::from_str(&ok(cli(&[
        "trigger",
        "create",
        "nightly",
        "--cron",
        "30 2 * * *",
        "--time-zone",
        "Europe/Berlin",
        "--calendar",
        "office",
        "--json",
    ])))
    .unwrap();
    let id = created["id"].as_str().unwrap();
    // Sunday 28 March 2027 is no working day, Monday the 29th a holiday: Tuesday it is.
    let preview: serde_json::Value = serde_json::from_str(&ok(cli(&[
        "trigger",
        "preview",
        id,
        "--from",
        "2027-03-27T00:00:00Z",
        "--count",
        "1",
        "--json",
    ])))
    .unwrap();
    assert_eq!(
        preview[0]["local"],
        "2027-03-30T02:30:00+02:00[Europe/Berlin]"
    );
    let window = ok(cli(&[
        "trigger", "create", "nightly", "--window", "sat,sun", "--open", "22:00", "--close",
        "06:00",
    ]));
    assert!(window.contains("sat,sun 22:00–06:00"), "{window}");
    let listed = ok(cli(&["trigger", "ls"]));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let disabled = ok(cli(&["trigger", "disable", id]));
    assert!(disabled.contains("enabled       no"), "{disabled}");
    let refused = cli(&["trigger", "create", "nightly", "--cron", "* * *"]);
    assert_eq!(refused.status.code(), Some(6));
    let in_use = cli(&["calendar", "rm", "office"]);
    assert_eq!(in_use.status.code(), Some(5));
}
