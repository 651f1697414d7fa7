//! A headless Chromium driven over WebDriver (chromedriver), for the control panel's tests:
//! open pages, find, click and type, read text, run a script, save screenshots.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::eventually;

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session, ended (and its driver stopped) when dropped.
pub(crate) struct Browser {
    driver: Child,
    base: String,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium whose preferred language is
    /// `language` (`en-US`, `ru-RU`).
    pub(crate) fn start(language: &str) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver_path = program("DIRIGENT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {driver_path} ({err}): run scripts/test, which installs it")
            });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The client speaks plain HTTP to the driver, but reqwest wants a TLS provider chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            runtime,
            http: reqwest::Client::new(),
            _profile: profile,
        };
        eventually("chromedriver to be ready", || {
            browser
                .request(reqwest::Method::GET, "/status", None)
                .ok()
                .filter(|status| status["value"]["ready"] == json!(true))
        });
        let chromium = program("DIRIGENT_TEST_CHROMIUM", "/usr/bin/chromium");
        let profile_dir = browser._profile.path().display().to_string();
        let session = browser
            .request(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,900",
                                 format!("--lang={language}"),
                                 format!("--user-data-dir={profile_dir}")],
                        "prefs": {"intl.accept_languages": language},
                    },
                }}})),
            )
            .unwrap_or_else(|err| panic!("no browser session: {err}"));
        let id = session["value"]["sessionId"].as_str().unwrap().to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut request = self.http.request(method, &url);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.map_err(|err| err.to_string())?;
            let ok = response.status().is_success();
            let value: Value = response.json().await.map_err(|err| err.to_string())?;
            if ok {
                Ok(value)
            } else {
                Err(value["value"]["message"].as_str().unwrap_or("").to_owned())
            }
        })
    }

    fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.request(method, path, body)
            .unwrap_or_else(|err| panic!("WebDriver {path}: {err}"))["value"]
            .take()
    }

    /// Opens `url` and waits until it has loaded.
    pub(crate) fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// The address of the page shown now.
    pub(crate) fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The element `css` selects, if the page has one now.
    pub(crate) fn find(&self, css: &str) -> Option<String> {
        let found = self.request(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .ok()
            .and_then(|value| value["value"][ELEMENT].as_str().map(str::to_owned))
    }

    /// The element `css` selects, waiting for it to appear.
    pub(crate) fn wait_for(&self, css: &str) -> String {
        eventually(&format!("an element {css}"), || self.find(css))
    }

    /// Clicks the element `css` selects (waiting for it). A live part of the page may be
    /// drawn anew between finding the element and clicking it: then it is found again.
    pub(crate) fn click(&self, css: &str) {
        eventually(&format!("a click on {css}"), || {
            let element = self.find(css)?;
            let clicked = self.request(
                reqwest::Method::POST,
                &format!("/element/{element}/click"),
                Some(json!({})),
            );
            match clicked {
                Ok(_) => Some(()),
                Err(err) if err.contains("stale element") => None,
                Err(err) => panic!("WebDriver click on {css}: {err}"),
            }
        });
    }

    /// Sizes the window, as a laptop's or a phone's.
    pub(crate) fn resize(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Empties the field `css` selects.
    pub(crate) fn clear(&self, css: &str) {
        let element = self.wait_for(css);
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        );
    }

    /// Types `text` into the field `css` selects, after what it holds.
    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css);
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The visible text of the element `css` selects, or "" when there is none.
    pub(crate) fn text(&self, css: &str) -> String {
        let Some(element) = self.find(css) else {
            return String::new();
        };
        // The element may have been replaced by a live update between the two calls.
        self.request(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .ok()
        .and_then(|value| value["value"].as_str().map(str::to_owned))
        .unwrap_or_default()
    }

    /// Waits until the element `css` selects shows text containing `wanted`.
    pub(crate) fn wait_text(&self, css: &str, wanted: &str) -> String {
        eventually(&format!("{css} to show {wanted:?}"), || {
            Some(self.text(css)).filter(|text| text.contains(wanted))
        })
    }

    /// Runs `script` (an async function body that ends by calling `arguments[0]` with its
    /// answer) in the page and answers what it passed.
    pub(crate) fn run_async(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Accepts the confirmation dialog the page shows now.
    pub(crate) fn accept_dialog(&self) {
        eventually("a dialog", || {
            self.request(reqwest::Method::POST, "/alert/accept", Some(json!({})))
                .ok()
        });
    }

    /// Saves a screenshot of the page as `target/panel-screenshots/NAME.png`.
    pub(crate) fn screenshot(&self, name: &str) {
        let encoded = self.command(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap();
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// Where screenshots go: `panel-screenshots` in the target directory.
fn screenshots_dir() -> PathBuf {
    let bin = PathBuf::from(crate::support::BIN);
    // target/<profile>/dirigent
    let target = bin.parent().and_then(|dir| dir.parent()).unwrap();
    target.join("panel-screenshots")
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.request(reqwest::Method::DELETE, "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
