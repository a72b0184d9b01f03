//! For the metrics tests: plain HTTP GETs over loopback, a real Prometheus
//! server (Debian's `prometheus`, installed by `cargo xtask setup`) started
//! on loopback with its own storage and removed afterwards, its query API,
//! and `promtool check metrics`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A whole HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr` (HTTP/1.0: the body ends with the connection).
pub fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// The value of every sample of `name` (any labels) in a text exposition,
/// with its label text (`{process="x",close="y"}`, or empty).
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(_) => {
                    let end = rest.rfind("} ")?;
                    (&rest[..=end], &rest[end + 2..])
                }
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// `promtool check metrics` on `text`: None when it passes (or promtool is
/// absent: then a note is printed), else what it said.
pub fn promtool_problems(text: &str) -> Option<String> {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        println!("note: promtool not found (`cargo xtask setup` installs it): not checked");
        return None;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.status.success()).then_some(said)
}

/// Percent-encodes a query parameter.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of the test's own: loopback only, scraping one
/// target every second, its storage in a directory removed with it.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts it scraping `target` (job `tcptrace`), evaluating the rule
    /// files `rules`, and waits until it is ready; None (with a note) when
    /// Debian's prometheus is not installed.
    pub fn start(target: SocketAddr, rules: &[PathBuf]) -> Option<Prometheus> {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(binary) = binary else {
            println!("note: prometheus not installed (`cargo xtask setup` installs it)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-prometheus-{}-{}",
            std::process::id(),
            target.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let rule_files: String = rules
            .iter()
            .map(|r| format!("  - '{}'\n", r.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rule_files}\
             scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A free port: bound, read, released (Prometheus binds it next).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut p = Prometheus { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = get(addr, "/-/ready", None)
                && r.status == 200
            {
                return Some(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}): {}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: each result's labels and value.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let Ok(r) = get(self.addr, &path, None) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_ne!(v["status"], "error", "query {promql}: {}", r.body);
        v["data"]["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        let labels = r["metric"].as_object()?.clone();
                        let value = r["value"][1].as_str()?.parse().ok()?;
                        Some((labels, value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every alerting or recording rule loaded: (name, health, last error).
    pub fn rules(&self) -> Vec<(String, String, String)> {
        let Ok(r) = get(self.addr, "/api/v1/rules", None) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .map(|r| (text(&r["name"]), text(&r["health"]), text(&r["lastError"])))
            .collect()
    }

    /// The one value of `promql`, 0 when it has none yet.
    pub fn value(&self, promql: &str) -> f64 {
        self.query(promql).first().map_or(0.0, |(_, v)| *v)
    }

    /// Waits (at most `limit`) until `done` holds for `promql`'s value.
    pub fn wait_value(&self, promql: &str, limit: Duration, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.value(promql);
            if done(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {promql}: last value {v}; targets: {}",
                get(self.addr, "/api/v1/targets", None).map_or_else(|e| e.to_string(), |r| r.body)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
