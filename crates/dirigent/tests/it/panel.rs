//! The control panel in a real headless Chromium against a real `dirigent serve` with its local
//! agent: an operator logs in, defines a robot, starts it, watches its output arrive live,
//! pauses, resumes and stops it; pages follow changes made elsewhere without reloading; a
//! viewer sees no buttons and a forged request is still refused. Screenshots of the main pages
//! land in `target/panel-screenshots`.

use serde_json::Value;

use crate::{
    browser::Browser,
    support::{ServerProcess, json, ok, run, run_with_input},
};

const PASSWORD: &str = "panel-password-1";
const VIEWER_PASSWORD: &str = "viewer-password-1";

pub(crate) fn log_in(browser: &Browser, server: &ServerProcess, username: &str, password: &str) {
    browser.type_into("#username", username);
    browser.type_into("#password", password);
    browser.click("#login button[type=submit]");
    crate::support::eventually("the login to go through", || {
        Some(()).filter(|()| !browser.url().contains("/login"))
    });
    assert!(browser.url().starts_with(&server.url), "{}", browser.url());
}

/// Checks the accessible basics of the page shown: a language, a label for every field, a
/// name for every button and link, and text contrast of at least 4.5:1 (3:1 for large text)
/// against the background it is drawn on.
#[track_caller]
fn assert_accessible(browser: &Browser) {
    let found = browser.run_async(
        r#"const done = arguments[0];
        const fields = [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
          .filter((field) => field.labels.length === 0 && !field.getAttribute("aria-label"))
          .map((field) => field.name || field.id);
        const unnamed = [...document.querySelectorAll("button, a[href]")]
          .filter((control) => control.textContent.trim() === "" && !control.getAttribute("aria-label"))
          .map((control) => control.outerHTML);
        const rgb = (text) => text.match(/[\d.]+/g).map(Number);
        const luminance = ([r, g, b]) => [r, g, b]
          .map((c) => c / 255).map((c) => c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4)
          .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
        const background = (element) => {
          for (let at = element; at; at = at.parentElement) {
            const color = rgb(getComputedStyle(at).backgroundColor);
            if (color.length < 4 || color[3] > 0) return color;
          }
          return [255, 255, 255];
        };
        const faint = [];
        for (const element of document.querySelectorAll("body *")) {
          const own = [...element.childNodes].some((node) => node.nodeType === 3 && node.textContent.trim());
          const style = getComputedStyle(element);
          if (!own || style.visibility === "hidden" || element.closest("[hidden]") || element.offsetParent === null) continue;
          const [fg, bg] = [luminance(rgb(style.color)), luminance(background(element))];
          const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
          const large = parseFloat(style.fontSize) >= 24 || (parseFloat(style.fontSize) >= 18.66 && style.fontWeight >= 700);
          if (ratio < (large ? 3 : 4.5)) faint.push(`${element.tagName} "${element.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
        }
        done([document.documentElement.lang, fields, unnamed, faint]);"#,
    );
    assert!(
        !found[0].as_str().unwrap().is_empty(),
        "no language: {found}"
    );
    for (n, what) in [
        (1, "unlabeled fields"),
        (2, "unnamed controls"),
        (3, "faint text"),
    ] {
        assert_eq!(
            found[n],
            Value::Array(Vec::new()),
            "{what} on {}",
            browser.url()
        );
    }
}

/// Marks the page, so that a later check can tell it was not loaded again.
pub(crate) fn mark_page(browser: &Browser) {
    browser.run_async("window.panelTestMark = 'kept'; arguments[0](true);");
}

pub(crate) fn page_was_kept(browser: &Browser) -> bool {
    browser.run_async("arguments[0](window.panelTestMark === 'kept');") == Value::Bool(true)
}

#[test]
fn an_operator_runs_a_robot_from_the_panel_and_a_viewer_may_only_look() {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    server.login(PASSWORD);
    ok(run_with_input(
        server.cli(&[
            "user",
            "create",
            "vera",
            "--role",
            "viewer",
            "--password-stdin",
        ]),
        &format!("{VIEWER_PASSWORD}\n"),
    ));
    let browser = Browser::start("en-US");

    // A page asked for without a session leads to the login, and back after it.
    browser.open(&format!("{}/robots", server.url));
    browser.wait_for("#login");
    assert!(
        browser.url().contains("/login?next=%2Frobots"),
        "{}",
        browser.url()
    );
    browser.screenshot("login");
    assert_accessible(&browser);
    // The keyboard moves focus, and focus shows.
    browser.type_into("#username", "\u{e004}");
    let focus = browser.run_async(
        "const at = document.activeElement;
         arguments[0]([at.id, at.matches(':focus-visible'), getComputedStyle(at).outlineStyle]);",
    );
    assert_eq!(focus[0], "password", "{focus}");
    assert_eq!(focus[1], true, "{focus}");
    assert_ne!(focus[2], "none", "{focus}");
    browser.type_into("#username", "admin");
    browser.type_into("#password", "wrong password");
    browser.click("#login button[type=submit]");
    browser.wait_text("#alert", "wrong username or password");
    browser.open(&format!("{}/login?next=%2Frobots", server.url));
    log_in(&browser, &server, "admin", PASSWORD);
    assert!(browser.url().ends_with("/robots"), "{}", browser.url());

    // Define a robot with the form.
    browser.type_into("#robot-name", "ticker");
    browser.type_into("#robot-description", "counts aloud");
    browser.type_into(
        "#robot-argv",
        "sh\n-c\ni=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
    );
    browser.click("#new-robot button[type=submit]");
    browser.wait_for("#robot-mode");
    assert!(
        browser.url().ends_with("/robots/ticker"),
        "{}",
        browser.url()
    );
    browser.wait_text("main", "counts aloud");
    browser.screenshot("robot");
    assert_accessible(&browser);

    // Start it: the run's page shows its output as the robot writes it.
    browser.click("button[data-path='/api/v1/runs']");
    browser.wait_for("#output");
    assert!(browser.url().contains("/runs/"), "{}", browser.url());
    browser.wait_text("#run-state-value", "running");
    browser.wait_text("#run-origin", "Started by: user admin");
    browser.wait_for("#run-duration");
    browser.wait_text("#output", "tick 3");
    mark_page(&browser);
    browser.wait_text("#output", "tick 12");
    assert!(page_was_kept(&browser), "the output came without reloading");
    browser.screenshot("run");
    assert_accessible(&browser);

    browser.click("button[data-path$='/pause']");
    browser.wait_text("#run-state-value", "paused");
    browser.wait_for("button[data-path$='/resume']");
    assert!(browser.find("button[data-path$='/pause']").is_none());
    browser.click("button[data-path$='/resume']");
    browser.wait_text("#run-state-value", "running");
    browser.click("button[data-path$='/stop']");
    browser.wait_text("#run-state-value", "stopped");
    browser.wait_text("#timeline", "paused");
    browser.wait_text("#timeline", "user:admin");
    assert!(browser.find("button[data-path$='/stop']").is_none());
    // The output stream ends with the run.
    browser.wait_for("#output[data-ended='true']");

    // A start with arguments and environment, from the robot's form.
    browser.open(&format!("{}/robots/ticker", server.url));
    browser.click("#start-with-toggle");
    browser.type_into("#start-args", "--full");
    browser.type_into("#start-env", "MODE=test\nDAY=mon");
    browser.click("#start-with button[type=submit]");
    browser.wait_for("#output");
    let url = browser.url();
    let started = url.rsplit('/').next().unwrap();
    let shown = json(&server, &["run", "show", started]);
    assert_eq!(shown["args"], serde_json::json!(["--full"]), "{shown}");
    assert_eq!(
        shown["env"],
        serde_json::json!({"DAY": "mon", "MODE": "test"})
    );
    ok(run(server.cli(&["run", "kill", started])));
    json(&server, &["run", "wait", started, "--timeout", "30"]);

    // The operator's pause and stop put the robot in manual mode; back to auto from its page.
    browser.open(&format!("{}/robots/ticker", server.url));
    browser.wait_text("#robot-mode", "manual");
    browser.click("button[data-path='/api/v1/robots/ticker/auto']");
    browser.wait_text("#robot-mode", "auto");

    // A run started elsewhere (the CLI) appears on the open pages by itself.
    browser.open(&format!("{}/", server.url));
    browser.wait_text("#agents-online", "1/1");
    browser.wait_text("#runs-now", "0");
    mark_page(&browser);
    let started: Value =
        serde_json::from_str(&ok(run(server.cli(&["run", "start", "ticker", "--json"])))).unwrap();
    browser.wait_text("#runs-now", "1");
    browser.wait_text("#active-runs", started["id"].as_str().unwrap());
    assert!(
        page_was_kept(&browser),
        "the dashboard followed without reloading"
    );
    browser.screenshot("dashboard");
    assert_accessible(&browser);
    // On a phone's screen, the page fits its width.
    browser.resize(390, 844);
    let overflow = browser.run_async(
        "arguments[0](document.documentElement.scrollWidth - document.documentElement.clientWidth);",
    );
    assert_eq!(overflow, 0, "the dashboard is wider than a phone");
    browser.screenshot("dashboard-phone");
    browser.resize(1280, 900);
    browser.open(&format!("{}/agents", server.url));
    browser.wait_text("#agents", "ticker");
    browser.screenshot("agents");
    assert_accessible(&browser);
    // Force stop asks first.
    browser.click("#agents a[href^='/runs/']");
    browser.wait_text("#run-state-value", "running");
    browser.click("button[data-path$='/kill']");
    browser.accept_dialog();
    browser.wait_text("#run-state-value", "killed");

    // Russian, chosen by the user, stays with the user.
    browser.click("#language");
    browser.click("#language option[value='ru']");
    browser.wait_text("nav", "Агенты");
    browser.screenshot("run-ru");
    assert_accessible(&browser);
    browser.click("button[data-path='/api/v1/logout']");
    browser.wait_for("#login");

    // A viewer sees the robot and its runs, and no button that changes anything.
    log_in(&browser, &server, "vera", VIEWER_PASSWORD);
    browser.open(&format!("{}/robots/ticker", server.url));
    browser.wait_text("#history", "stopped");
    for action in ["/api/v1/runs", "/api/v1/robots/ticker/auto"] {
        assert!(
            browser
                .find(&format!("button[data-path='{action}']"))
                .is_none()
        );
    }
    assert!(browser.find("#history button").is_none());
    browser.open(&format!("{}/robots", server.url));
    browser.wait_for("#robots");
    assert!(browser.find("#new-robot").is_none());
    // Forged with the viewer's own session and CSRF token, a start is still refused.
    let answer = browser.run_async(
        "const done = arguments[0];
         fetch('/api/v1/runs', {method: 'POST', credentials: 'same-origin',
           headers: {'content-type': 'application/json',
                     'x-csrf-token': document.querySelector('meta[name=csrf-token]').content},
           body: JSON.stringify({robot: 'ticker'})})
         .then(async (r) => done([r.status, (await r.json()).message]));",
    );
    assert_eq!(answer[0], 403, "{answer}");
    assert!(
        answer[1].as_str().unwrap().starts_with("vera may not run"),
        "{answer}"
    );
    // And without the CSRF token, even an administrator's cookie does nothing.
    let answer = browser.run_async(
        "const done = arguments[0];
         fetch('/api/v1/logout', {method: 'POST', credentials: 'same-origin'})
         .then((r) => done(r.status));",
    );
    assert_eq!(answer, 403);
}

#[test]
fn an_operator_schedules_and_sorts_work_from_the_panel() {
    let server = ServerProcess::start(
        &["--no-local-agent"],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    server.login(PASSWORD);
    ok(run(
        server.cli(&["robot", "create", "nightly", "--", "true"])
    ));
    ok(run(server.cli(&["queue", "create", "invoices"])));
    for n in 1..=3 {
        ok(run(server.cli(&[
            "queue",
            "add",
            "invoices",
            "--payload",
            &format!(r#"{{"invoice": {n}}}"#),
            "--reference",
            &format!("INV-{n}"),
        ])));
    }
    let browser = Browser::start("en-US");
    browser.open(&format!("{}/login", server.url));
    log_in(&browser, &server, "admin", PASSWORD);

    // A cron trigger in Berlin time, as a dry run; its page previews the next fire times.
    browser.open(&format!("{}/triggers", server.url));
    browser.type_into("#trigger-description", "nightly run");
    browser.type_into("#trigger-cron", "30 2 * * *");
    browser.type_into("#trigger-zone", "Europe/Berlin");
    browser.click("#new-trigger input[name=dry_run]");
    browser.click("#new-trigger button[type=submit]");
    browser.wait_for("#preview");
    assert!(
        browser.url().contains("/triggers/trg_"),
        "{}",
        browser.url()
    );
    let preview = browser.wait_text("#preview", "02:30");
    assert!(
        preview.contains("+01:00") || preview.contains("+02:00"),
        "{preview}"
    );
    browser.wait_text("#trigger-state", "dry run");
    browser.screenshot("trigger");
    assert_accessible(&browser);
    browser.click("button[data-path$='/disable']");
    browser.wait_text("#trigger-enabled", "no");
    browser.open(&format!("{}/triggers", server.url));
    browser.wait_text("#triggers", "nightly run");
    browser.screenshot("triggers");
    assert_accessible(&browser);

    // A calendar of holidays, and the robot's definition edited as JSON.
    browser.open(&format!("{}/calendars", server.url));
    browser.type_into("#calendar-name", "berlin");
    browser.type_into("#calendar-dates", "2026-12-25\n2026-12-26");
    browser.click("#new-calendar button[type=submit]");
    browser.wait_text("#calendar-berlin", "2");
    browser.screenshot("calendars");
    assert_accessible(&browser);
    browser.open(&format!("{}/robots/nightly", server.url));
    browser.click("#edit-robot-toggle");
    browser.clear("#robot-spec");
    browser.type_into(
        "#robot-spec",
        r#"{"argv": ["true"], "description": "edited in the panel", "max_parallel": 2,
            "queues": ["invoices"]}"#,
    );
    browser.click("#edit-robot button[type=submit]");
    browser.wait_text("main", "edited in the panel");
    // The robot's page shows its triggers and the queues it works on, with their figures.
    browser.wait_text("#robot-triggers", "nightly run");
    browser.wait_text("#robot-queues", "invoices");
    assert!(
        browser.text("#robot-queues tbody tr").contains('3'),
        "{}",
        browser.text("#robot-queues")
    );
    browser.screenshot("robot-scheduled");
    assert_accessible(&browser);
    let robot: Value = serde_json::from_str(&ok(run(
        server.cli(&["robot", "show", "nightly", "--json"])
    )))
    .unwrap();
    assert_eq!(robot["max_parallel"], 2, "{robot}");
    // A definition the API refuses says why, and changes nothing.
    browser.click("#edit-robot-toggle");
    browser.clear("#robot-spec");
    browser.type_into("#robot-spec", r#"{"argv": []}"#);
    browser.click("#edit-robot button[type=submit]");
    browser.wait_text("#alert", "argv");

    // A queue's items by filter; bulk delete what the filter selects, then requeue it.
    browser.open(&format!("{}/queues", server.url));
    browser.wait_text("#queues", "invoices");
    browser.screenshot("queues");
    assert_accessible(&browser);
    browser.click("a[href='/queues/invoices']");
    browser.wait_text("#items", "INV-3");
    browser.type_into("#filter-reference", "INV-2");
    browser.click("#item-filter button[type=submit]");
    browser.wait_for("#items");
    assert!(
        browser.url().ends_with("/queues/invoices?reference=INV-2"),
        "{}",
        browser.url()
    );
    let items = browser.text("#items");
    assert!(
        items.contains("INV-2") && !items.contains("INV-3"),
        "{items}"
    );
    browser.click("button[data-path$='/items/delete']");
    browser.accept_dialog();
    browser.wait_text("#items", "deleted");
    browser.screenshot("queue");
    assert_accessible(&browser);
    let deleted: Value = serde_json::from_str(&ok(run(server.cli(&[
        "queue", "items", "invoices", "--status", "deleted", "--json",
    ]))))
    .unwrap();
    assert_eq!(deleted.as_array().unwrap().len(), 1, "{deleted}");
    assert_eq!(deleted[0]["reference"], "INV-2");
    browser.click("button[data-path$='/items/requeue']");
    browser.accept_dialog();
    browser.wait_text("#items", "new");

    // Users and roles, and the audit log, which recorded all of the above.
    browser.open(&format!("{}/users", server.url));
    browser.wait_text("#roles", "viewer");
    browser.click("#new-role button[type=submit]");
    browser.wait_text("#roles", "finance-*");
    browser.screenshot("users");
    assert_accessible(&browser);
    browser.open(&format!("{}/audit", server.url));
    browser.wait_text("#audit", "/api/v1/queues/invoices/items/delete");
    browser.screenshot("audit");
    assert_accessible(&browser);
}

#[test]
fn an_administrator_runs_a_program_from_the_console_and_a_viewer_has_no_console() {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    server.login(PASSWORD);
    ok(run_with_input(
        server.cli(&[
            "user",
            "create",
            "vera",
            "--role",
            "viewer",
            "--password-stdin",
        ]),
        &format!("{VIEWER_PASSWORD}\n"),
    ));
    let browser = Browser::start("en-US");
    browser.open(&format!("{}/login?next=%2Fagents", server.url));
    log_in(&browser, &server, "admin", PASSWORD);

    // From the agents page into the console, aimed at the local agent.
    browser.click("#agents a[href='/console#target=local']");
    browser.wait_for("#console-form");
    assert_eq!(
        browser.run_async("arguments[0](document.getElementById('console-target').value);"),
        "local"
    );
    browser.click("#console-operation option[value='agent:exec']");
    browser.type_into(
        "#console-arg-argv",
        "sh\n-c\necho hello from the console; echo careful >&2; exit 3",
    );
    assert_accessible(&browser);
    browser.click("#console-form button[type=submit]");
    browser.wait_text("#console-output", "hello from the console");
    browser.wait_text("#console-output", "careful");
    browser.wait_text("#console-run-state", "failed");
    browser.wait_text("#console-result", "\"exit_code\": 3");
    browser.wait_text("#activities", "exec");
    browser.screenshot("console");

    // Its page shows what was asked and how it ended; Repeat fills the console in again.
    browser.click("#console-run-link");
    browser.wait_text("#activity-state", "exited with code 3");
    browser.wait_text("#output", "hello from the console");
    browser.click("#activity-state a.repeat");
    browser.wait_for("#console-arg-argv");
    let filled = browser.run_async(
        "arguments[0]([document.getElementById('console-operation').value, document.getElementById('console-arg-argv').value]);",
    );
    assert_eq!(filled[0], "agent:exec", "{filled}");
    assert!(
        filled[1]
            .as_str()
            .unwrap()
            .contains("echo hello from the console"),
        "{filled}"
    );

    // The orchestrator is a target too.
    browser.clear("#console-target");
    browser.type_into("#console-target", "server");
    browser.click("#console-operation option[value='server:info']");
    browser.click("#console-form button[type=submit]");
    browser.wait_text("#console-run-state", "succeeded");
    browser.wait_text("#console-result", "\"database\": \"sqlite\"");

    // A viewer has no console: not in the navigation, refused at its address.
    browser.click("button[data-path='/api/v1/logout']");
    browser.wait_for("#login");
    browser.open(&format!("{}/login?next=%2F", server.url));
    log_in(&browser, &server, "vera", VIEWER_PASSWORD);
    assert!(browser.find("nav a[href='/console']").is_none());
    browser.open(&format!("{}/console", server.url));
    browser.wait_text("main", "Not allowed");
    let listed = json(&server, &["activity", "ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
}

#[test]
fn an_operator_searches_and_follows_the_logs_and_a_runs_output() {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    server.login(PASSWORD);
    ok(run(server.cli(&[
        "robot",
        "create",
        "heron",
        "--",
        "sh",
        "-c",
        r#"echo "heron starts $N"; echo '{"level": "error", "msg": "heron stuck", "invoice": 9}'"#,
    ])));
    let first = json(&server, &["run", "start", "heron", "--env", "N=1"]);
    let first = first["id"].as_str().unwrap().to_owned();
    json(
        &server,
        &[
            "run",
            "wait",
            &first,
            "--state",
            "succeeded",
            "--timeout",
            "30",
        ],
    );
    let browser = Browser::start("en-US");
    browser.open(&format!("{}/login?next=%2Flogs%3Fq%3Dheron", server.url));
    log_in(&browser, &server, "admin", PASSWORD);

    // Found, coloured by level, with the record's fields and a link to its run.
    browser.wait_text("#log-records", "heron starts 1");
    browser.wait_text("#log-records tr.level-error", "heron stuck invoice=9");
    assert!(
        browser
            .find(&format!("#log-records a[href='/runs/{first}']"))
            .is_some()
    );
    assert_accessible(&browser);
    browser.screenshot("logs");

    // A query that does not parse says where.
    browser.open(&format!("{}/logs?q=%22heron", server.url));
    browser.wait_text("#logs-problem", "q: at 1: a quote that is not closed");

    // Followed live: a new run's lines arrive without reloading.
    browser.open(&format!("{}/logs?q=heron", server.url));
    browser.wait_for("#logs-follow");
    mark_page(&browser);
    browser.click("#logs-follow");
    browser.wait_text("#log-records", "heron starts 1");
    json(&server, &["run", "start", "heron", "--env", "N=2"]);
    browser.wait_text("#log-records", "heron starts 2");
    assert!(page_was_kept(&browser));

    // From a run's page, a search within its output.
    browser.open(&format!("{}/runs/{first}", server.url));
    browser.wait_text("#output", "heron stuck invoice=9");
    browser.type_into("#run-search-q", "stuck");
    browser.click("#run-search button[type=submit]");
    browser.wait_text("#log-records", "heron stuck");
    assert!(
        browser.url().contains(&format!("run={first}")),
        "{}",
        browser.url()
    );
    assert!(!browser.text("#log-records").contains("heron starts"));
}
