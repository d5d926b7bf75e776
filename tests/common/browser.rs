//! Helpers for the real-browser test: a static file server on 127.0.0.1, a minimal W3C
//! WebDriver client for Debian's `chromedriver`, and base64 decoding of its screenshots.
//!
//! The WebDriver client is four JSON-over-HTTP calls on loopback (new session, navigate,
//! execute script, screenshot), written on `std::net` + `serde_json`: a driver crate
//! (fantoccini, chromiumoxide) would bring an async runtime and a TLS stack into every
//! test build for them.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// Serve `root` on 127.0.0.1 (loopback only) from a background thread; returns the port.
pub fn serve(root: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("address").port();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &root);
            });
        }
    });
    port
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// One HTTP/1.1 request (GET or HEAD), answered and closed.
fn answer(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut request = String::new();
    let mut reader = BufReader::new(stream.try_clone()?);
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/").split('?').next().unwrap_or("/");
    let relative = if target == "/" {
        "index.html"
    } else {
        target.trim_start_matches('/')
    };
    let path = root.join(relative);
    let body = match (relative.contains(".."), std::fs::read(&path)) {
        (false, Ok(body)) => body,
        _ => {
            return stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
        }
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        content_type(&path),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(&body)?;
    }
    Ok(())
}

/// The first of `names` found on PATH.
pub fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// An HTTP reply's body, read to its Content-Length (chromedriver may keep the
/// connection open, so reading to the end could wait forever).
fn read_reply(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A running chromedriver, killed on drop. Its log (with Chromium's own stderr, through
/// `--enable-chrome-logs`) goes to a file whose end every failure message shows.
pub struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// The last `lines` lines of the file at `path` (or why it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

impl Driver {
    /// Start `chromedriver`, logging to `log`, and wait until it answers `/status`.
    pub fn start(chromedriver: &Path, log: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let output = std::fs::File::create(log).expect("create the chromedriver log");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .arg("--enable-chrome-logs")
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .expect("start chromedriver");
        let mut driver = Driver {
            child,
            port,
            log: log.to_path_buf(),
        };
        for _ in 0..300 {
            if let Ok(status) = driver.try_call("GET", "/status", None) {
                if status["ready"] == json!(true) {
                    return driver;
                }
            }
            if let Ok(Some(exit)) = driver.child.try_wait() {
                driver.fail(&format!("chromedriver exited at start ({exit})"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        driver.fail(&format!(
            "chromedriver was not ready on port {port} in 30 s"
        ))
    }

    /// Panic with `what` and the end of chromedriver's log.
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- the end of chromedriver's log ({}):\n{}",
            self.log.display(),
            tail(&self.log, 60)
        )
    }

    /// An HTTP request to chromedriver; the JSON reply's `value`, or why there is none.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let reply = TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut stream| {
            stream.write_all(request.as_bytes())?;
            read_reply(&mut stream)
        });
        let json = reply.map_err(|e| format!("{method} {path}: {e}"))?;
        let value: Value = serde_json::from_str(&json)
            .map_err(|e| format!("{method} {path}: chromedriver replied {json:.300}: {e}"))?;
        Ok(value["value"].clone())
    }

    /// [`Driver::try_call`], failing the test (with the log's end) when it fails.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// A headless Chromium session with `args`. chromedriver talks to Chromium over a
    /// pipe, not over a DevTools port that Chromium picks and announces in a file that
    /// chromedriver polls for: one fewer thing to race when Chromium starts slowly (the
    /// pipe is what chromedriver's own log recommends as more reliable).
    pub fn session(&self, args: &[&str]) -> Session<'_> {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--remote-debugging-pipe"])
            .collect();
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": args}}}});
        let value = self.call("POST", "/session", Some(caps));
        let Some(id) = value["sessionId"].as_str() else {
            self.fail(&format!("no session: {value}"))
        };
        Session {
            driver: self,
            id: id.to_string(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session, closed on drop.
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    pub fn goto(&self, url: &str) {
        self.driver.call(
            "POST",
            &format!("/session/{}/url", self.id),
            Some(json!({"url": url})),
        );
    }

    /// Run `script` (a function body; `arguments[i]` are `args`) in the page; its result.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        let path = format!("/session/{}/execute/sync", self.id);
        self.driver
            .call("POST", &path, Some(json!({"script": script, "args": args})))
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let value = self
            .driver
            .call("GET", &format!("/session/{}/screenshot", self.id), None);
        base64_decode(value.as_str().expect("screenshot as base64"))
    }

    /// Give the file input matching `css` the file at `path` (as a user picking it).
    pub fn upload(&self, css: &str, path: &Path) {
        let found = self.driver.call(
            "POST",
            &format!("/session/{}/element", self.id),
            Some(json!({"using": "css selector", "value": css})),
        );
        let element = found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"));
        let path = path.display().to_string();
        let url = format!("/session/{}/element/{element}/value", self.id);
        self.driver.call("POST", &url, Some(json!({"text": path})));
    }

    pub fn set_window_size(&self, width: u32, height: u32) {
        let path = format!("/session/{}/window/rect", self.id);
        self.driver.call(
            "POST",
            &path,
            Some(json!({"width": width, "height": height})),
        );
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Not `call`: a panic while the test is already unwinding would abort.
        let _ = self
            .driver
            .try_call("DELETE", &format!("/session/{}", self.id), None);
    }
}

/// Standard base64 (RFC 4648, padded) to bytes.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for group in clean.chunks(4) {
        let digits: Vec<u32> = group
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| value(c))
            .collect();
        let word = digits
            .iter()
            .enumerate()
            .fold(0u32, |w, (i, d)| w | d << (18 - 6 * i));
        out.extend(&word.to_be_bytes()[1..digits.len()]);
    }
    out
}
