//! A small Chrome DevTools Protocol driver for end-to-end browser tests.
//!
//! [`Browser::launch`] starts headless Chromium with a fresh profile and
//! `--remote-debugging-port=0`, reads `DevTools listening on ws://...` from
//! its stderr and opens one WebSocket to the browser endpoint. A [`Page`] is
//! a tab attached with `Target.attachToTarget` in flatten mode, so its
//! commands travel on the same socket with a `sessionId`. A reader task
//! routes replies by `id` and keeps events: per session the problems
//! (`Runtime.exceptionThrown`, `console.error` via `Runtime.consoleAPICalled`,
//! and `Log.entryAdded` at level error, where Chromium reports CSP violations
//! and failed loads; also dialogs, which are dismissed so that they cannot
//! block the page), and browser-wide the downloads
//! (`Browser.downloadWillBegin`/`downloadProgress`, which
//! `Browser.setDownloadBehavior` turns on with `eventsEnabled`).
//!
//! Input is real: clicks are `Input.dispatchMouseEvent` at the centre of the
//! element's box, in CSS pixels of the layout viewport (also under mobile
//! emulation's zoom), once `document.elementFromPoint` shows nothing covers
//! it; typing is `Input.insertText`; keys are `Input.dispatchKeyEvent`.
//! Every wait is bounded and every failure panics saying what was expected.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::sleep;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long one command may take before the test gives up on Chromium.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the `wait_*` helpers poll before they panic.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Without the networking flags Chromium tries to reach Google at start-up.
const FLAGS: &str = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --remote-debugging-port=0";

/// Helpers defined in the page for each DOM operation; arguments are spliced in as JSON.
const DOM_JS: &str = r#"
const find = sel => document.querySelector(sel);
const visible = el => {
  const r = el.getBoundingClientRect(), s = getComputedStyle(el);
  return r.width > 0 && r.height > 0 && s.display !== 'none' && s.visibility !== 'hidden';
};
const fire = (el, ...types) => types.forEach(t => el.dispatchEvent(new Event(t, { bubbles: true })));
// The centre of the first match once a user could use it, else why not.
const ready = (sel, hitTest) => {
  const el = find(sel);
  if (!el) return 'no such element';
  if (!visible(el)) return 'not visible';
  if (el.matches(':disabled')) return 'disabled';
  el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
  const r = el.getBoundingClientRect(), x = r.left + r.width / 2, y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  if (hitTest && !(hit && el.contains(hit))) return 'covered by ' + (hit ? hit.outerHTML.slice(0, 120) : 'nothing');
  return { x, y };
};
const texts = (sel, text) => {
  const seen = [...document.querySelectorAll(sel)].filter(visible).map(e => e.innerText);
  return { found: seen.some(t => t.includes(text)), seen };
};
const focusAll = sel => { const el = find(sel); el.focus(); el.select?.(); return [el.type, el.value]; };
const setValue = (sel, value) => {
  const el = find(sel);
  Object.getOwnPropertyDescriptor(Object.getPrototypeOf(el), 'value').set.call(el, value);
  fire(el, 'input');
};
const commit = sel => { const el = find(sel); fire(el, 'change'); return el.value; };
const choose = (sel, want) => {
  const el = find(sel);
  if (!(el instanceof HTMLSelectElement)) throw new Error('not a <select>');
  const have = [...el.options].map(o => o.value), missing = want.filter(v => !have.includes(v));
  if (missing.length) throw new Error(`no options ${JSON.stringify(missing)} among ${JSON.stringify(have)}`);
  if (!el.multiple && want.length !== 1) throw new Error('a single <select> takes exactly one value');
  for (const o of el.options) o.selected = want.includes(o.value);
  fire(el, 'input', 'change');
};
"#;

fn create_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// What a thrown exception says (its description includes the stack), from `exceptionDetails`.
fn thrown(details: &Value) -> &str {
    details["exception"]["description"]
        .as_str()
        .unwrap_or(str_of(&details["text"]))
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Value>>,
    problems: HashMap<String, Vec<String>>,
    download_dir: PathBuf,
    /// guid → (the file as saved, the name the page gave it).
    downloads_begun: HashMap<String, (PathBuf, PathBuf)>,
    downloads_done: VecDeque<Result<PathBuf, String>>,
    closed: bool,
}

/// The browser-wide WebSocket: a writer channel and what the reader task has seen.
struct Conn {
    next_id: AtomicU64,
    out: mpsc::UnboundedSender<Message>,
    state: Mutex<State>,
    download_done: Notify,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a command and returns its `result`, or the CDP error message.
    async fn try_call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state();
            assert!(
                !state.closed,
                "{method}: the connection to Chromium is closed (did it crash?)"
            );
            state.pending.insert(id, tx);
        }
        let sent = self.out.send(Message::Text(msg.to_string().into()));
        sent.expect("the WebSocket writer task has stopped");
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Err(_) => panic!("{method}: Chromium did not reply within {REPLY_TIMEOUT:?}"),
            Ok(Err(_)) => panic!("{method}: the connection to Chromium closed before it replied"),
            Ok(Ok(reply)) => reply,
        };
        match reply.get("error") {
            Some(e) => Err(str_of(&e["message"]).to_owned()),
            None => Ok(reply["result"].clone()),
        }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let result = self.try_call(session, method, params).await;
        result.unwrap_or_else(|e| panic!("CDP command {method} failed: {e}"))
    }

    fn on_event(&self, method: &str, p: &Value, session: Option<&str>) {
        let mut state = self.state();
        let problem = match method {
            "Runtime.exceptionThrown" => {
                let (d, line) = (&p["exceptionDetails"], &p["exceptionDetails"]["lineNumber"]);
                Some(format!(
                    "uncaught exception: {} ({}:{line})",
                    thrown(d),
                    str_of(&d["url"])
                ))
            }
            "Runtime.consoleAPICalled" if p["type"] == "error" => {
                let args = p["args"].as_array().map(Vec::as_slice).unwrap_or_default();
                let text = args
                    .iter()
                    .map(|a| a["value"].as_str().unwrap_or(str_of(&a["description"])));
                Some(format!(
                    "console.error: {}",
                    text.collect::<Vec<_>>().join(" ")
                ))
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => {
                let e = |field| str_of(&p["entry"][field]);
                Some(format!("log ({}): {} {}", e("source"), e("text"), e("url")))
            }
            // A dialog would block every later evaluation, so dismiss it and report it.
            "Page.javascriptDialogOpening" => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed); // its reply is ignored
                let dismiss = json!({ "id": id, "method": "Page.handleJavaScriptDialog",
                    "params": { "accept": false }, "sessionId": session });
                let _ = self.out.send(Message::Text(dismiss.to_string().into()));
                Some(format!(
                    "dialog dismissed: {} {:?}",
                    str_of(&p["type"]),
                    str_of(&p["message"])
                ))
            }
            "Browser.downloadWillBegin" => {
                // Saved under its guid (a name never taken before), then
                // renamed to the name the page gave it once complete.
                let saved = state.download_dir.join(str_of(&p["guid"]));
                let named = state.download_dir.join(str_of(&p["suggestedFilename"]));
                state
                    .downloads_begun
                    .insert(p["guid"].to_string(), (saved, named));
                None
            }
            "Browser.downloadProgress" if p["state"] != "inProgress" => {
                let begun = state.downloads_begun.remove(&p["guid"].to_string());
                let done = match (begun, str_of(&p["state"])) {
                    (Some((saved, named)), "completed") => std::fs::rename(&saved, &named)
                        .map(|()| named)
                        .map_err(|e| format!("renaming download {saved:?}: {e}")),
                    (path, end) => Err(format!("download {path:?} ended as {end:?}")),
                };
                state.downloads_done.push_back(done);
                self.download_done.notify_one();
                None
            }
            _ => None,
        };
        if let (Some(problem), Some(session)) = (problem, session) {
            let problems = state.problems.entry(session.to_owned()).or_default();
            problems.push(problem);
        }
    }
}

/// Headless Chromium with a fresh profile and TMPDIR; killed with its process group on drop.
pub struct Browser {
    child: tokio::process::Child,
    conn: Arc<Conn>,
    _scratch: tempfile::TempDir,
}

impl Browser {
    /// Launches headless Chromium from `$CHROMIUM` or `/usr/bin/chromium`,
    /// installing Debian's `chromium` package first if it is missing and we are root.
    pub async fn launch() -> Browser {
        let exe = std::env::var_os("CHROMIUM").map_or("/usr/bin/chromium".into(), PathBuf::from);
        if !exe.exists() {
            install_chromium(&exe).await;
        }
        // The profile, and TMPDIR for the files Chromium leaves behind when killed.
        let scratch = tempfile::tempdir().expect("create a temporary directory for Chromium");
        let (profile, tmp) = (scratch.path().join("profile"), scratch.path().join("tmp"));
        create_dir(&tmp);
        let mut child = tokio::process::Command::new(&exe)
            .args(FLAGS.split_whitespace())
            .arg(format!("--user-data-dir={}", profile.display()))
            .env("TMPDIR", &tmp)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", exe.display()));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let mut seen = Vec::new();
        let found = tokio::time::timeout(REPLY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                match line.strip_prefix("DevTools listening on ") {
                    Some(url) => return Some(url.trim().to_owned()),
                    None => seen.push(line),
                }
            }
            None
        });
        let Ok(Some(ws_url)) = found.await else {
            let (seen, exit) = (seen.join("\n"), child.try_wait());
            let exe = exe.display();
            panic!(
                "{exe} printed no 'DevTools listening on ws://' (exit: {exit:?}); stderr:\n{seen}"
            );
        };
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        // Full-page screenshots can exceed tungstenite's default size limits.
        let config = WebSocketConfig::default().max_message_size(None);
        let config = config.max_frame_size(None);
        let connect = tokio_tungstenite::connect_async_with_config(&ws_url, Some(config), true);
        let (ws, _) = tokio::time::timeout(REPLY_TIMEOUT, connect)
            .await
            .expect("connecting to Chromium's DevTools WebSocket timed out")
            .unwrap_or_else(|e| panic!("could not connect to DevTools at {ws_url}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (out, mut outbox) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(msg) = outbox.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let (next_id, state, download_done) = (AtomicU64::new(1), Mutex::default(), Notify::new());
        let conn = Arc::new(Conn {
            next_id,
            out,
            state,
            download_done,
        });
        let reader = Arc::clone(&conn);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or_default()) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = reader.state().pending.remove(&id) {
                        let _ = tx.send(v); // the caller may have timed out
                    }
                } else if let Some(method) = v["method"].as_str() {
                    reader.on_event(method, &v["params"], v["sessionId"].as_str());
                }
            }
            let mut state = reader.state();
            state.closed = true;
            state.pending.clear(); // wakes every waiter with "closed"
        });
        Browser {
            child,
            conn,
            _scratch: scratch,
        }
    }

    /// Opens a new tab with the given viewport, with Runtime, Log and Page events enabled.
    pub async fn page(&self, viewport: Viewport) -> Page {
        let blank = json!({ "url": "about:blank" });
        let target = self.conn.call(None, "Target.createTarget", blank).await;
        let target_id = str_of(&target["targetId"]).to_owned();
        let attach = json!({ "targetId": target_id, "flatten": true });
        let attached = self.conn.call(None, "Target.attachToTarget", attach).await;
        let session = str_of(&attached["sessionId"]).to_owned();
        let conn = Arc::clone(&self.conn);
        let page = Page {
            conn,
            session,
            target_id,
        };
        for domain in ["Runtime", "Log", "Page"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page.set_viewport(viewport).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: renderers and the zygote too, not just the browser.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            use nix::sys::signal::{SIGKILL, killpg};
            let _ = killpg(nix::unistd::Pid::from_raw(pid), SIGKILL);
        }
        // Reap it before its directories are removed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[expect(clippy::print_stderr, reason = "say what is being installed, and why")]
async fn install_chromium(exe: &Path) {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let how = "install it with `apt-get install chromium`, or set $CHROMIUM to its path";
    let apt = Path::new("/usr/bin/apt-get").exists();
    assert!(
        root && apt,
        "Chromium not found at {}; {how}",
        exe.display()
    );
    let apt_get = |args: &'static [&'static str]| async move {
        eprintln!(
            "browser tests: no Chromium; running apt-get {}",
            args.join(" ")
        );
        let mut command = tokio::process::Command::new("apt-get");
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command.status().await.is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "chromium"].as_slice();
    if !apt_get(install).await {
        assert!(apt_get(&["update"]).await, "apt-get update failed; {how}");
        assert!(apt_get(install).await, "apt-get install failed; {how}");
    }
    assert!(
        exe.exists(),
        "installed chromium, yet {} is missing",
        exe.display()
    );
}

#[derive(Clone, Copy, Debug)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    pub mobile: bool,
}

impl Viewport {
    pub const DESKTOP: Viewport = Viewport {
        width: 1280,
        height: 800,
        mobile: false,
    };
    pub const PHONE: Viewport = Viewport {
        width: 390,
        height: 844,
        mobile: true,
    };
}

/// One tab, driven over its flattened CDP session.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    target_id: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Mobile viewports also get touch emulation, so `(pointer: coarse)` matches.
    pub async fn set_viewport(&self, v: Viewport) {
        let metrics = json!({ "width": v.width, "height": v.height, "deviceScaleFactor": 1, "mobile": v.mobile });
        self.call("Emulation.setDeviceMetricsOverride", metrics)
            .await;
        let touch = json!({ "enabled": v.mobile });
        self.call("Emulation.setTouchEmulationEnabled", touch).await;
    }

    /// Navigates and waits until the new document's `readyState` is `complete`.
    pub async fn goto(&self, url: &str) {
        let loader = |tree: Value| {
            tree["frameTree"]["frame"]["loaderId"]
                .as_str()
                .map(String::from)
        };
        let before = loader(self.call("Page.getFrameTree", json!({})).await);
        let nav = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = nav["errorText"].as_str() {
            let problems = self.problems();
            panic!("navigating to {url} failed: {error}; problems: {problems:?}");
        }
        // A same-document navigation (a new #fragment) has no loader and keeps the document.
        if nav["loaderId"].is_string() {
            let deadline = Instant::now() + WAIT_TIMEOUT;
            while loader(self.call("Page.getFrameTree", json!({})).await) == before {
                let late = Instant::now() > deadline;
                assert!(!late, "navigation to {url} never replaced the old document");
                sleep(Duration::from_millis(20)).await;
            }
        }
        let loaded = "document.readyState === 'complete'";
        self.wait_for(loaded, &format!("{url} to load")).await;
    }

    async fn try_eval(&self, js: &str) -> Result<Value, String> {
        let params = json!({ "expression": js, "returnByValue": true, "awaitPromise": true, "userGesture": true });
        let session = Some(self.session.as_str());
        let r = self
            .conn
            .try_call(session, "Runtime.evaluate", params)
            .await?;
        if let Some(d) = r.get("exceptionDetails") {
            return Err(thrown(d).to_owned());
        }
        // NaN, Infinity, -0 and bigints come back as their string form.
        let result = &r["result"];
        Ok(result
            .get("unserializableValue")
            .or(result.get("value"))
            .cloned()
            .unwrap_or_default())
    }

    /// Evaluates `js`, awaiting a promise, and returns its value; panics if it throws.
    pub async fn eval(&self, js: &str) -> Value {
        let value = self.try_eval(js).await;
        value.unwrap_or_else(|e| panic!("evaluating `{js}` threw: {e}"))
    }

    /// Evaluates `expr` with the [`DOM_JS`] helpers in scope.
    fn dom(expr: String) -> String {
        format!("(() => {{ {DOM_JS}\nreturn {expr}; }})()")
    }

    async fn wait_until(&self, js: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_until_within(js, what, WAIT_TIMEOUT, done).await
    }

    async fn wait_until_within(
        &self,
        js: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_eval(js).await;
            match &last {
                Ok(v) if done(v) => return v.clone(),
                _ if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
                _ => {
                    let url = self.try_eval("location.href").await.unwrap_or_default();
                    let problems = self.problems();
                    panic!(
                        "timed out after {timeout:?} waiting for {what}\n  last value: {last:?}\n  page: {url}\n  problems: {problems:#?}"
                    );
                }
            }
        }
    }

    /// Polls the expression `js` every 50 ms until it is truthy (a throw counts
    /// as false) and returns its value.
    pub async fn wait_for(&self, js: &str, what: &str) -> Value {
        self.wait_for_secs(js, what, WAIT_TIMEOUT.as_secs()).await
    }

    /// [`Page::wait_for`] with a longer wait, for what takes a model start.
    pub async fn wait_for_secs(&self, js: &str, what: &str, secs: u64) -> Value {
        let js =
            format!("(async () => {{ const v = await ({js}\n); return {{ truthy: !!v, v }}; }})()");
        let timeout = Duration::from_secs(secs);
        self.wait_until_within(&js, what, timeout, |r| r["truthy"] == true)
            .await["v"]
            .take()
    }

    /// Waits for a visible element matching `selector` whose innerText contains `text`.
    pub async fn wait_text(&self, selector: &str, text: &str) {
        let js = Self::dom(format!("texts({}, {})", json!(selector), json!(text)));
        let what = format!("a visible `{selector}` containing {text:?}");
        self.wait_until(&js, &what, |v| v["found"] == true).await;
    }

    /// The innerText of the first element matching `selector`, once there is one.
    pub async fn text(&self, selector: &str) -> String {
        let js = format!("document.querySelector({})?.innerText", json!(selector));
        let what = format!("an element `{selector}`");
        let text = self.wait_until(&js, &what, Value::is_string).await;
        str_of(&text).to_owned()
    }

    /// Waits until the first match is visible, enabled and (if `hit_test`) uncovered;
    /// scrolls it into view and returns the centre of its box.
    async fn ready(&self, selector: &str, hit_test: bool) -> (f64, f64) {
        let js = Self::dom(format!("ready({}, {hit_test})", json!(selector)));
        let what = format!("`{selector}` to be visible, enabled and (for a click) uncovered");
        let at = self.wait_until(&js, &what, Value::is_object).await;
        let coordinate = |axis| at[axis].as_f64().unwrap_or_default();
        (coordinate("x"), coordinate("y"))
    }

    /// A real left click at the centre of the first match, once a user could click it.
    pub async fn click(&self, selector: &str) {
        let (x, y) = self.ready(selector, true).await;
        let steps = [
            ("mouseMoved", "none", 0),
            ("mousePressed", "left", 1),
            ("mouseReleased", "left", 0),
        ];
        for (kind, button, buttons) in steps {
            let event = json!({ "type": kind, "x": x, "y": y, "button": button, "buttons": buttons, "clickCount": 1 });
            self.call("Input.dispatchMouseEvent", event).await;
        }
    }

    /// Replaces the value of an input or textarea as typing would, then fires `change`.
    pub async fn fill(&self, selector: &str, text: &str) {
        self.ready(selector, false).await;
        let (sel, txt) = (json!(selector), json!(text));
        let focused = self.eval(&Self::dom(format!("focusAll({sel})"))).await;
        if matches!(
            focused[0].as_str(),
            Some("date" | "datetime-local" | "time" | "month")
        ) {
            // Chromium cannot type into date and time fields; set them as the
            // page's own script would.
            self.eval(&Self::dom(format!("setValue({sel}, {txt})")))
                .await;
        } else {
            if focused[1] != "" {
                self.press("Backspace").await; // deletes the selection
            }
            if !text.is_empty() {
                self.call("Input.insertText", json!({ "text": text })).await;
            }
        }
        let value = self.eval(&Self::dom(format!("commit({sel})"))).await;
        let typed = text.replace("\r\n", "\n");
        assert_eq!(value, typed, "the value of `{selector}` after filling it");
    }

    /// Selects exactly the options of a `<select>` whose value is in `values`.
    pub async fn select(&self, selector: &str, values: &[&str]) {
        self.ready(selector, false).await;
        let js = Self::dom(format!("choose({}, {})", json!(selector), json!(values)));
        let chosen = self.try_eval(&js).await;
        chosen.unwrap_or_else(|e| panic!("selecting {values:?} in `{selector}`: {e}"));
    }

    /// Presses and releases a named key ("Enter", "Escape", "Tab", "ArrowDown", ...),
    /// a space, or a single letter or digit.
    pub async fn press(&self, key: &str) {
        let named = match key {
            "Enter" => Some((13, "\r")),
            "Escape" => Some((27, "")),
            "Tab" => Some((9, "")),
            "Backspace" => Some((8, "")),
            "Delete" => Some((46, "")),
            "ArrowLeft" => Some((37, "")),
            "ArrowUp" => Some((38, "")),
            "ArrowRight" => Some((39, "")),
            "ArrowDown" => Some((40, "")),
            "Home" => Some((36, "")),
            "End" => Some((35, "")),
            " " => Some((32, " ")),
            _ => None,
        };
        let (vk, text) = match (named, key.as_bytes()) {
            (Some(named), _) => named,
            (None, &[c]) if c.is_ascii_alphanumeric() => (u32::from(c.to_ascii_uppercase()), key),
            _ => panic!("press: unsupported key {key:?}"),
        };
        let code = match key.as_bytes() {
            b" " => "Space".to_owned(),
            &[c] if c.is_ascii_digit() => format!("Digit{key}"),
            &[_] => format!("Key{}", key.to_ascii_uppercase()),
            _ => key.to_owned(),
        };
        let down = if text.is_empty() {
            "rawKeyDown"
        } else {
            "keyDown"
        };
        for (kind, text) in [(down, text), ("keyUp", "")] {
            let event = json!({ "type": kind, "key": key, "code": code, "windowsVirtualKeyCode": vk, "text": text });
            self.call("Input.dispatchKeyEvent", event).await;
        }
    }

    /// Writes a PNG of the whole page, not just the viewport, to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let size = &self.call("Page.getLayoutMetrics", json!({})).await["cssContentSize"];
        let (width, height) = (&size["width"], &size["height"]);
        let clip = json!({ "x": 0, "y": 0, "width": width, "height": height, "scale": 1 });
        let params = json!({ "format": "png", "captureBeyondViewport": true, "clip": clip });
        let shot = self.call("Page.captureScreenshot", params).await;
        let png = base64::engine::general_purpose::STANDARD.decode(str_of(&shot["data"]));
        let png = png.expect("Page.captureScreenshot returns base64 data");
        if let Some(dir) = path.parent() {
            create_dir(dir);
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Lets downloads land in `dir` and records them from now on. The setting is
    /// browser-wide: it applies to every page of this browser, and the last call wins.
    pub async fn allow_downloads(&self, dir: &Path) {
        create_dir(dir);
        self.conn.state().download_dir = dir.to_owned();
        let params =
            json!({ "behavior": "allowAndName", "downloadPath": dir, "eventsEnabled": true });
        self.conn
            .call(None, "Browser.setDownloadBehavior", params)
            .await;
    }

    /// Waits for the oldest finished download not yet returned and gives its path.
    pub async fn wait_download(&self) -> PathBuf {
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            let notified = self.conn.download_done.notified();
            if let Some(done) = self.conn.state().downloads_done.pop_front() {
                let path = done.unwrap_or_else(|e| panic!("{e}"));
                let missing = !path.exists();
                assert!(
                    !missing,
                    "Chromium finished a download but {path:?} does not exist"
                );
                return path;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let problems = self.problems();
                panic!(
                    "no download finished within {WAIT_TIMEOUT:?} (after allow_downloads?); problems: {problems:?}"
                );
            }
        }
    }

    /// Everything that went wrong in the page so far: uncaught exceptions,
    /// `console.error`, error log entries (CSP violations, failed loads) and dialogs.
    pub fn problems(&self) -> Vec<String> {
        let state = self.conn.state();
        state
            .problems
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }

    pub fn clear_problems(&self) {
        self.conn.state().problems.remove(&self.session);
    }

    pub async fn close(self) {
        let target = json!({ "targetId": self.target_id });
        self.conn.call(None, "Target.closeTarget", target).await;
        self.clear_problems();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(clippy::print_stderr, reason = "report how long a launch takes")]
async fn browser_driver_works() {
    use axum::http::header::{CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
    use axum::routing::get;
    const PAGE: &str = "<!doctype html><meta name=viewport content='width=device-width'><title>t</title>\
        <button id=b>Click me</button><input id=i><input id=d type=date>\
        <select id=s multiple><option value=a>A<option value=b>B<option value=c>C</select>\
        <a id=dl href=/file.txt>download</a><p id=out>-</p><div id=tall></div>\
        <script src=/app.js></script><script>document.title = 'inline ran'</script>";
    const APP: &str = "const out = document.getElementById('out');\
        document.getElementById('b').onclick = e => e.target.textContent = 'Clicked';\
        document.addEventListener('change', e => out.textContent = e.target.id + ':' + \
          (e.target.multiple ? [...e.target.selectedOptions].map(o => o.value) : e.target.value));\
        document.addEventListener('keydown', e => { if (e.key === 'Enter') out.textContent = 'enter'; });\
        document.getElementById('tall').style.height = '3000px';\
        throw new Error('boom from app.js');";
    let csp = [
        (CONTENT_SECURITY_POLICY, "default-src 'self'"),
        (CONTENT_TYPE, "text/html"),
    ];
    let file = [(CONTENT_DISPOSITION, "attachment; filename=\"report.txt\"")];
    let app = axum::Router::new()
        .route("/", get(move || async move { (csp, PAGE) }))
        .route(
            "/app.js",
            get(|| async { ([(CONTENT_TYPE, "text/javascript")], APP) }),
        )
        .route(
            "/file.txt",
            get(move || async move { (file, "hello download") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
    let listener = listener.expect("bind a local port");
    let url = format!("http://{}/", listener.local_addr().expect("local address"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let started = Instant::now();
    let browser = Browser::launch().await;
    let page = browser.page(Viewport::DESKTOP).await;
    let took = started.elapsed();
    eprintln!("browser_driver_works: launch and a first page took {took:?}");
    page.goto(&url).await;
    let title = page.eval("document.title").await;
    assert_eq!(title, "t", "the CSP refuses the inline script");
    page.click("#b").await;
    page.wait_text("#b", "Clicked").await;
    page.fill("#i", "first").await;
    page.fill("#i", "hello").await;
    assert_eq!(page.text("#out").await, "i:hello");
    page.fill("#d", "2024-02-29").await;
    page.wait_text("#out", "d:2024-02-29").await;
    page.select("#s", &["a", "c"]).await;
    page.wait_text("#out", "s:a,c").await;
    page.press("Enter").await;
    page.wait_text("#out", "enter").await;

    let dir = tempfile::tempdir().expect("temporary directory");
    page.screenshot(&dir.path().join("shots/page.png")).await;
    let png = std::fs::read(dir.path().join("shots/page.png")).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG"
    );
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    assert!(
        height > 3000,
        "the screenshot is {height} px tall, not the whole page"
    );
    page.allow_downloads(&dir.path().join("downloads")).await;
    page.click("#dl").await;
    let file = page.wait_download().await;
    assert_eq!(file, dir.path().join("downloads/report.txt"));
    let content = std::fs::read_to_string(&file).expect("read the download");
    assert_eq!(content, "hello download");

    let problems = page.problems().join("\n");
    let thrown = problems.contains("Error: boom from app.js");
    assert!(thrown, "the thrown error is reported: {problems}");
    let csp = "Executing inline script violates the following Content Security Policy directive";
    assert!(
        problems.contains(csp),
        "the CSP violation is reported: {problems}"
    );
    page.clear_problems();
    assert_eq!(page.problems(), Vec::<String>::new());

    page.set_viewport(Viewport::PHONE).await;
    page.goto(&url).await;
    let phone = page.eval("[innerWidth, matchMedia('(pointer: coarse)').matches]");
    assert_eq!(phone.await, json!([390, true]));
    page.click("#b").await;
    page.wait_text("#b", "Clicked").await;
    page.close().await;
}
