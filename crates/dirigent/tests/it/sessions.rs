//! Graphical sessions under a real Xvfb: robots that need a display get one of their own,
//! wait for one when all are taken, and are told when theirs dies.

use crate::{
    lifecycle::{await_output, create_robot, server_with, start_running, wait_state},
    support::{ServerProcess, eventually, json, ok, run},
};

/// A server whose local agent keeps `sessions` graphical sessions.
fn server(sessions: &str) -> ServerProcess {
    server_with(&["--local-agent-sessions", sessions])
}

fn session(server: &ServerProcess, id: &str) -> serde_json::Value {
    json(server, &["session", "show", id])
}

/// Waits until the session is in `state` (it may not be reported yet at first).
fn wait_session(server: &ServerProcess, id: &str, state: &str) -> serde_json::Value {
    eventually(&format!("session {id} {state}"), || {
        let output = run(server.cli(&["session", "show", id, "--json"]));
        let shown: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (output.status.success() && shown["state"] == state).then_some(shown)
    })
}

/// A screenshot of a session, taken with the CLI: its width, height and RGB pixels.
fn screenshot(server: &ServerProcess, id: &str) -> (usize, usize, Vec<u8>) {
    let shot = server.dir.path().join("shot.png");
    ok(run(server.cli(&[
        "session",
        "screenshot",
        id,
        "--output",
        shot.to_str().unwrap(),
    ])));
    decode_png(&std::fs::read(&shot).unwrap())
}

/// A PNG's width, height and RGB pixels.
fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    pixels.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, pixels)
}

#[test]
fn a_robot_that_needs_a_display_gets_a_session_of_its_own() {
    let server = server("1");
    let ready = wait_session(&server, "local/1", "ready");
    assert_eq!(
        (ready["width"].as_u64(), ready["height"].as_u64()),
        (Some(1920), Some(1080))
    );
    let display = ready["display"].as_str().unwrap().to_owned();
    let go = server.dir.path().join("go");
    let paints = format!(
        "echo display=$DISPLAY; xsetroot -solid '#ff8000' && echo painted; \
         xwininfo -root | grep -q 'Width: 1920' && echo full-size; \
         XAUTHORITY=/nonexistent xwininfo -root >/dev/null 2>&1 || echo strangers-refused; \
         while [ ! -e {} ]; do sleep 0.05; done",
        go.display()
    );
    create_robot(
        &server,
        "painter",
        &["--needs-display", "true"],
        &["sh", "-c", &paints],
    );
    let started = json(&server, &["run", "start", "painter"]);
    let id = started["id"].as_str().unwrap();
    await_output(&server, id, "strangers-refused");

    // What the robot drew is what the screenshot shows.
    let (width, height, pixels) = screenshot(&server, "local/1");
    assert_eq!((width, height), (1920, 1080));
    for (x, y) in [(0, 0), (960, 540), (1919, 1079)] {
        let at = (y * width + x) * 3;
        assert_eq!(&pixels[at..at + 3], [0xff, 0x80, 0x00], "pixel ({x}, {y})");
    }
    std::fs::write(&go, "").unwrap();
    wait_state(&server, id, "succeeded");
    let logs = ok(run(server.cli(&["run", "logs", id])));
    for line in [
        format!("display={display}"),
        "painted".to_owned(),
        "full-size".to_owned(),
        "strangers-refused".to_owned(),
    ] {
        assert!(logs.lines().any(|seen| seen == line), "{line} in {logs}");
    }

    // After the run the session is made anew, and its history says so.
    let again = wait_session(&server, "local/1", "ready");
    let mut states: Vec<&str> = again["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|change| change["state"].as_str().unwrap())
        .collect();
    // (A display another test's X server took meanwhile costs one more try.)
    states.dedup();
    assert!(
        states.ends_with(&["in_use", "restarting", "ready"]),
        "{states:?}"
    );
    assert!(
        again["history"][0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("made anew after run {id}")),
        "{again}"
    );
    let listed = json(&server, &["session", "ls"]);
    assert_eq!(listed[0]["id"], "local/1");

    // An operator makes it anew by hand.
    ok(run(server.cli(&["session", "restart", "local/1"])));
    let restarted = session(&server, "local/1");
    assert_eq!(restarted["state"], "ready", "{restarted}");
    assert_eq!(restarted["reason"], "restarted by an operator");
    assert_eq!(
        restarted["history"][1]["state"], "restarting",
        "{restarted}"
    );
    crate::support::fails(
        run(server.cli(&["session", "show", "local/9"])),
        4,
        "agent \"local\" has no graphical session \"9\"",
    );
    crate::support::fails(
        run(server.cli(&["session", "show", "nonsense"])),
        1,
        "a session is named AGENT/NUMBER",
    );
}

#[test]
fn runs_wait_for_a_free_session_and_one_whose_display_dies_fails() {
    let server = server("1");
    wait_session(&server, "local/1", "ready");
    let go = server.dir.path().join("go");
    create_robot(
        &server,
        "first",
        &["--needs-display", "true"],
        &[
            "sh",
            "-c",
            &format!(
                "echo up; while [ ! -e {} ]; do sleep 0.05; done",
                go.display()
            ),
        ],
    );
    create_robot(
        &server,
        "second",
        &["--needs-display", "true", "--restart-policy", "on-failure"],
        &["sh", "-c", "echo up; while true; do sleep 0.05; done"],
    );
    let (first, _) = start_running(&server, "first");
    let waiting = json(&server, &["run", "start", "second"]);
    let second = waiting["id"].as_str().unwrap().to_owned();
    let queued = eventually("the second run waiting for a session", || {
        let shown = json(&server, &["run", "show", &second]);
        (shown["state"] == "queued" && !shown["reason"].is_null()).then_some(shown)
    });
    assert_eq!(
        queued["reason"], "waiting for any agent: no agent offers a free graphical session",
        "{queued}"
    );
    std::fs::write(&go, "").unwrap();
    wait_state(&server, &first, "succeeded");
    wait_state(&server, &second, "running");
    await_output(&server, &second, "up");

    // Its X server dies: the run fails saying why, the session comes back, and the restart
    // policy starts the robot again on it.
    let in_use = wait_session(&server, "local/1", "in_use");
    let record = server
        .dir
        .path()
        .join("dirigent-data/local-agent/sessions/1/server.json");
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let x_server = u32::try_from(recorded["pid"].as_u64().unwrap()).unwrap();
    crate::support::signal_process(x_server, nix::sys::signal::Signal::SIGKILL);
    let failed = wait_state(&server, &second, "failed");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "its display died: the X server of {} died",
            in_use["display"].as_str().unwrap()
        )),
        "{failed}"
    );
    let replacement = eventually("the restart policy's run on the new session", || {
        let runs = json(&server, &["run", "ls", "--active"]);
        let runs = runs.as_array().unwrap().clone();
        (runs.len() == 1 && runs[0]["state"] == "running").then(|| runs[0].clone())
    });
    let history = session(&server, "local/1")["history"].clone();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|change| change["state"] == "restarting"
                && change["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains("died"))),
        "{history}"
    );
    let id = replacement["id"].as_str().unwrap();
    crate::support::fails(
        run(server.cli(&["session", "restart", "local/1"])),
        5,
        &format!("graphical session 1 is in use by run {id}"),
    );
    ok(run(server.cli(&["run", "kill", id])));
    wait_state(&server, id, "killed");
}

#[test]
fn an_agent_without_xvfb_says_so_to_the_runs_that_wait() {
    let server = ServerProcess::start(
        &["--local-agent-sessions", "1"],
        &[
            ("DIRIGENT_ADMIN_PASSWORD", "lifecycle-password-1"),
            ("DIRIGENT_XVFB", "/nonexistent/Xvfb"),
        ],
    );
    server.login("lifecycle-password-1");
    create_robot(&server, "painter", &["--needs-display", "true"], &["true"]);
    let started = json(&server, &["run", "start", "painter"]);
    let id = started["id"].as_str().unwrap().to_owned();
    let waiting = eventually("the run's reason", || {
        let shown = json(&server, &["run", "show", &id]);
        shown["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("xvfb"))
            .then_some(shown)
    });
    assert_eq!(
        waiting["reason"],
        "waiting for any agent with a free graphical session: agent local: `xvfb` is not \
         installed (no /nonexistent/Xvfb program)"
    );
    assert_eq!(session(&server, "local/1")["state"], "failed");
    crate::support::fails(
        run(server.cli(&["session", "screenshot", "local/1"])),
        5,
        "graphical session 1 has no X server now",
    );
    ok(run(server.cli(&["run", "stop", &id])));
}

#[test]
fn a_restarted_agent_keeps_the_sessions_of_its_robots() {
    let server = server("1");
    wait_session(&server, "local/1", "ready");
    let go = server.dir.path().join("go");
    let paints = format!(
        "xsetroot -solid '#0000ff' && echo painted; while [ ! -e {} ]; do sleep 0.05; done; \
         xwininfo -root >/dev/null && echo still-there",
        go.display()
    );
    create_robot(
        &server,
        "painter",
        &["--needs-display", "true"],
        &["sh", "-c", &paints],
    );
    let (id, _) = start_running(&server, "painter");
    await_output(&server, &id, "painted");
    let before = session(&server, "local/1");

    // The local agent dies and `serve` starts another, which adopts the robot and its X
    // server: the same display, still showing what the robot drew.
    crate::lifecycle::kill_local_agent(&server);
    let after = wait_session(&server, "local/1", "in_use");
    assert_eq!(after["display"], before["display"], "{after}");
    assert_eq!(after["run_id"], id.as_str());
    let (_, _, pixels) = screenshot(&server, "local/1");
    assert_eq!(&pixels[..3], [0x00, 0x00, 0xff]);

    std::fs::write(&go, "").unwrap();
    wait_state(&server, &id, "succeeded");
    await_output(&server, &id, "still-there");
    let made_anew = wait_session(&server, "local/1", "ready");
    assert!(
        made_anew["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains(&format!("made anew after run {id}"))),
        "{made_anew}"
    );
}

#[test]
fn the_panel_shows_a_sessions_screen_and_keeps_it_current() {
    let server = server("1");
    wait_session(&server, "local/1", "ready");
    let go = server.dir.path().join("go");
    let repaint = server.dir.path().join("repaint");
    let paints = format!(
        "xsetroot -solid '#00ff00' && echo painted; \
         while [ ! -e {repaint} ]; do sleep 0.05; done; xsetroot -solid '#ff00ff'; \
         while [ ! -e {go} ]; do sleep 0.05; done",
        repaint = repaint.display(),
        go = go.display()
    );
    create_robot(
        &server,
        "painter",
        &["--needs-display", "true"],
        &["sh", "-c", &paints],
    );
    let (id, _) = start_running(&server, "painter");
    await_output(&server, &id, "painted");

    let browser = crate::browser::Browser::start("ru-RU");
    browser.open(&format!("{}/login?next=%2Fsessions", server.url));
    crate::panel::log_in(&browser, &server, "admin", "lifecycle-password-1");
    browser.wait_text("h1", "Сеансы");
    browser.wait_text("#sessions", &id);
    // The screen comes live onto a canvas: what the robot drew, read back from it.
    browser.wait_for("canvas[data-live-screen]");
    let seen = browser.run_async(LOOK_AT_CANVAS);
    assert_eq!(seen, serde_json::json!([1920, 1080, [0, 255, 0]]), "{seen}");
    // A change on the screen reaches it; nothing comes while nothing changes.
    std::fs::write(&repaint, "").unwrap();
    let changed = eventually("the change on the canvas", || {
        let seen = browser.run_async(LOOK_AT_CANVAS);
        (seen[2] == serde_json::json!([255, 0, 255])).then_some(seen)
    });
    assert_eq!(changed[0], 1920);
    let quiet = browser.run_async(
        "const done = arguments[0];
         const canvas = document.querySelector('canvas[data-live-screen]');
         const before = canvas.dataset.frames;
         setTimeout(() => done([before, canvas.dataset.frames]), 1000);",
    );
    assert_eq!(quiet[0], quiet[1], "frames while nothing changed: {quiet}");
    browser.screenshot("sessions");
    std::fs::write(&go, "").unwrap();
    wait_state(&server, &id, "succeeded");

    // The run keeps the screen it ended on (a thumbnail), shown on its page.
    browser.open(&format!("{}/runs/{id}", server.url));
    browser.wait_text("#frames", "Экран в момент завершения");
    let kept = browser.run_async(LOOK_AT_IMAGE.replace("SELECTOR", "#latest-frame").as_str());
    assert_eq!(kept, serde_json::json!([640, 360, [255, 0, 255]]), "{kept}");
    browser.screenshot("run-frames");
}

/// A script that answers the live canvas's size and the colour of its pixel at (100, 100).
const LOOK_AT_CANVAS: &str = "const done = arguments[0];
     const look = () => {
       const canvas = document.querySelector('canvas[data-live-screen]');
       if (!canvas || canvas.dataset.frames === '0') return setTimeout(look, 50);
       const pixel = Array.from(canvas.getContext('2d').getImageData(100, 100, 1, 1).data.slice(0, 3));
       done([canvas.width, canvas.height, pixel]);
     };
     look();";

/// A script that waits for the image `SELECTOR` to load and answers its size and the colour
/// of its pixel at (100, 100).
const LOOK_AT_IMAGE: &str = "const done = arguments[0];
     const look = () => {
       const image = document.querySelector('SELECTOR');
       if (!image || !image.complete || image.naturalWidth === 0) return setTimeout(look, 50);
       const canvas = document.createElement('canvas');
       canvas.width = image.naturalWidth;
       canvas.height = image.naturalHeight;
       const context = canvas.getContext('2d');
       context.drawImage(image, 0, 0);
       const pixel = Array.from(context.getImageData(100, 100, 1, 1).data.slice(0, 3));
       done([image.naturalWidth, image.naturalHeight, pixel]);
     };
     look();";

#[test]
fn an_operator_takes_over_a_session_and_types_into_it() {
    let server = server("1");
    wait_session(&server, "local/1", "ready");
    // A window over the whole screen that says which keys it receives.
    create_robot(
        &server,
        "typist",
        &["--needs-display", "true"],
        &[
            "sh",
            "-c",
            "echo ready; exec stdbuf -oL xev -geometry 1920x1080+0+0",
        ],
    );
    let (id, _) = start_running(&server, "typist");
    await_output(&server, &id, "MapNotify");

    // Taken over without pausing the robot, so that its window takes the keys.
    let taken = json(&server, &["session", "control", "local/1", "--no-pause"]);
    assert_eq!(taken["controlled_by"], "admin", "{taken}");
    ok(run(
        server.cli(&["session", "click", "local/1", "100", "100"])
    ));
    ok(run(server.cli(&["session", "type", "local/1", "hI"])));
    ok(run(server.cli(&["session", "key", "local/1", "Return"])));
    await_output(&server, &id, "(keysym 0x68, h)");
    await_output(&server, &id, "(keysym 0x49, I)");
    await_output(&server, &id, "(keysym 0xff0d, Return)");
    await_output(&server, &id, "ButtonPress event");
    assert_eq!(json(&server, &["run", "show", &id])["state"], "running");

    // Another operator may neither send input nor take it; a viewer may not at all.
    for (user, role, code, message) in [
        (
            "olga",
            "operator",
            5,
            "local/1 is controlled by admin since",
        ),
        ("vera", "viewer", 3, "vera may not control sessions"),
    ] {
        ok(crate::support::run_with_input(
            server.cli(&["user", "create", user, "--role", role, "--password-stdin"]),
            "another-password-1\n",
        ));
        let config = server.dir.path().join(user);
        let as_user = |args: &[&str]| {
            let mut command = crate::support::dirigent(&config);
            command.args(args).arg("--url").arg(&server.url);
            command
        };
        ok(crate::support::run_with_input(
            as_user(&["login", "--username", user, "--password-stdin"]),
            "another-password-1\n",
        ));
        let refused = run(as_user(&["session", "type", "local/1", "x"]));
        assert_eq!(refused.status.code(), Some(code), "{user}: {refused:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(message),
            "{user}: {refused:?}"
        );
    }

    // Taken over as by default, the run waits paused until the session is given back.
    ok(run(server.cli(&["session", "release", "local/1"])));
    ok(run(server.cli(&["session", "control", "local/1"])));
    wait_state(&server, &id, "paused");
    ok(run(server.cli(&["session", "release", "local/1"])));
    wait_state(&server, &id, "running");
    assert!(session(&server, "local/1")["controlled_by"].is_null());
    ok(run(server.cli(&["run", "kill", &id])));
    wait_state(&server, &id, "killed");

    // Who watched and who controlled, and when, is in the audit log.
    ok(run(server.cli(&[
        "session",
        "screenshot",
        "local/1",
        "-o",
        "-",
    ])));
    let audit = json(&server, &["audit", "--limit", "200"]);
    let seen: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            let text = |key: &str| record[key].as_str().unwrap_or_default().to_owned();
            (text("actor"), text("action"), text("outcome"))
        })
        .collect();
    for (actor, action, outcome) in [
        (
            "user:admin",
            "WATCH /api/v1/sessions/{agent}/{number}",
            "allowed",
        ),
        (
            "user:admin",
            "POST /api/v1/sessions/{agent}/{number}/control",
            "allowed",
        ),
        (
            "user:admin",
            "POST /api/v1/sessions/{agent}/{number}/input",
            "allowed",
        ),
        (
            "user:admin",
            "DELETE /api/v1/sessions/{agent}/{number}/control",
            "allowed",
        ),
        (
            "user:vera",
            "POST /api/v1/sessions/{agent}/{number}/input",
            "denied",
        ),
    ] {
        let wanted = (actor.to_owned(), action.to_owned(), outcome.to_owned());
        assert!(seen.contains(&wanted), "{wanted:?} in {seen:?}");
    }
}

#[test]
fn an_operator_takes_over_a_session_from_the_panel() {
    let server = server("1");
    wait_session(&server, "local/1", "ready");
    create_robot(
        &server,
        "typist",
        &["--needs-display", "true"],
        &["sh", "-c", "exec stdbuf -oL xev -geometry 1920x1080+0+0"],
    );
    let (id, _) = start_running(&server, "typist");
    await_output(&server, &id, "MapNotify");

    let browser = crate::browser::Browser::start("en-US");
    browser.open(&format!("{}/login?next=%2Fsessions", server.url));
    crate::panel::log_in(&browser, &server, "admin", "lifecycle-password-1");
    browser.wait_for("canvas[data-live-screen]");
    browser.click("#sessions button[data-method=POST]");
    browser.wait_text("#sessions", "Controlled by admin");
    wait_state(&server, &id, "paused");
    // Paused, the robot's window takes no keys: resume it and keep control.
    ok(run(server.cli(&["run", "resume", &id])));
    wait_state(&server, &id, "running");
    browser.click("canvas[data-input]");
    await_output(&server, &id, "ButtonPress event");
    browser.type_into("canvas[data-input]", "ok");
    await_output(&server, &id, "(keysym 0x6f, o)");
    await_output(&server, &id, "(keysym 0x6b, k)");
    browser.screenshot("session-control");
    browser.click("#sessions button[data-method=DELETE]");
    eventually("the session given back", || {
        session(&server, "local/1")["controlled_by"]
            .is_null()
            .then_some(())
    });

    // An agent's sessions, and a session's own page with its history and live screen.
    browser.open(&format!("{}/agents", server.url));
    browser.click("a[href='/sessions?agent=local']");
    browser.wait_text("h1", "Sessions: local");
    browser.click("#sessions h2 a");
    browser.wait_text("h1", "Session local/1");
    browser.wait_text("#session-history", "in use");
    browser.wait_for("canvas[data-live-screen]");
    browser.screenshot("session");

    // A viewer may not send input from a browser either: 403, and the audit log says so.
    ok(crate::support::run_with_input(
        server.cli(&[
            "user",
            "create",
            "vera",
            "--role",
            "viewer",
            "--password-stdin",
        ]),
        "viewer-password-1\n",
    ));
    browser.click("button[data-path='/api/v1/logout']");
    browser.wait_for("#login");
    crate::panel::log_in(&browser, &server, "vera", "viewer-password-1");
    let refused = browser.run_async(
        "const done = arguments[0];
         fetch('/api/v1/sessions/local/1/input', {
           method: 'POST', credentials: 'same-origin',
           headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
           body: JSON.stringify({ events: [{ type: 'text', text: 'x' }] }),
         }).then(async (response) => done([response.status, (await response.json()).code]));",
    );
    assert_eq!(refused, serde_json::json!([403, "forbidden"]), "{refused}");
    let denied = json(&server, &["audit", "--actor", "user:vera", "--denied"]);
    assert_eq!(
        denied[0]["action"], "POST /api/v1/sessions/{agent}/{number}/input",
        "{denied}"
    );
    ok(run(server.cli(&["run", "kill", &id])));
    wait_state(&server, &id, "killed");
}

#[test]
fn an_agent_configured_by_file_refuses_oversized_screenshots_and_an_offline_one_says_so() {
    let server = server_with(&["--no-local-agent"]);
    let token = ok(run(server.cli(&["agent", "enroll-token"])))
        .trim()
        .to_owned();
    let settings = server.dir.path().join("agent.toml");
    let desktop = server.dir.path().join("desktop");
    std::fs::write(
        &settings,
        format!(
            "server = \"{}\"\nlabels = {{ site = \"lab\" }}\nsessions = 1\n\
             session_size = \"8192x4400\"\n\
             session_desktop = [\"sh\", \"-c\", \"echo $DISPLAY > {}; exec sleep 1000\"]\n",
            server.url,
            desktop.display()
        ),
    )
    .unwrap();
    let agent = crate::support::dirigent(&server.config_dir())
        .args(["agent", "--name", "pc-big", "--enroll-token", &token])
        .arg("--config")
        .arg(&settings)
        .arg("--data")
        .arg(server.dir.path().join("agent"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent = crate::support::KillOnDrop(agent);
    let ready = wait_session(&server, "pc-big/1", "ready");
    assert_eq!(
        (ready["width"].as_u64(), ready["height"].as_u64()),
        (Some(8192), Some(4400))
    );
    assert_eq!(json(&server, &["agent", "ls"])[0]["labels"]["site"], "lab");
    // Its desktop command runs in the session.
    let shown = eventually("the desktop started", || {
        std::fs::read_to_string(&desktop)
            .ok()
            .filter(|text| text.ends_with('\n'))
    });
    assert_eq!(shown.trim(), ready["display"].as_str().unwrap());
    crate::support::fails(
        run(server.cli(&["session", "screenshot", "pc-big/1"])),
        5,
        "the screen is 8192x4400, 36044800 pixels: more than the 33177600 a screenshot may hold",
    );

    drop(agent);
    eventually("the agent offline", || {
        (json(&server, &["agent", "ls"])[0]["state"] == "offline").then_some(())
    });
    crate::support::fails(
        run(server.cli(&["session", "screenshot", "pc-big/1"])),
        5,
        "agent pc-big is offline",
    );
    // Its X server outlives it for a while (for a restart to adopt); with the agent gone
    // and nothing else kept, its keeper stops it and leaves no file of its display behind.
    let record = server.dir.path().join("agent/sessions/1/server.json");
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    let x_server = recorded["pid"].as_u64().unwrap();
    let display = recorded["display"].as_u64().unwrap();
    eventually("the X server stopped by the keeper", || {
        let gone = !std::path::Path::new(&format!("/proc/{x_server}")).exists()
            && !std::path::Path::new(&format!("/tmp/.X{display}-lock")).exists();
        gone.then_some(())
    });
}
