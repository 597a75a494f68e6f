//! A throwaway Redis server for tests: `redis-server` on a free loopback port, keeping nothing
//! on disk, stopped on drop.
//!
//! The server is started through a small shell guard that stops it when the test process
//! closes the server's standard input, which the kernel does when the process ends, however it
//! ends; so a server kept in a `static`, never dropped, does not outlive its tests either.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const INSTALL: &str = "redis-server is needed for this test: install it with `apt-get install -y redis-server` (scripts/test does this on Debian)";

/// Runs `redis-server` with the arguments given, as the same process (`exec`), beside a
/// subshell that kills it once standard input reaches its end.
const GUARD: &str =
    r#"exec 3<&0; (read -r _ <&3; kill $$ 2>/dev/null) & exec redis-server "$@" 3<&-"#;

pub struct Redis {
    pub port: u16,
    folder: tempfile::TempDir,
    server: Option<Child>,
}

impl Redis {
    /// A new, empty server on a free loopback port.
    pub fn start() -> Redis {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !installed.is_ok_and(|status| status.success()) {
            panic!("{INSTALL}");
        }
        let folder = tempfile::Builder::new()
            .prefix("wakafleet-redis-")
            .tempdir()
            .expect("a temporary folder");
        let mut redis = Redis {
            port: 0,
            folder,
            server: None,
        };
        // Another process may take the free port before the server binds it: try another.
        for _ in 0..5 {
            redis.port = free_port();
            match redis.spawn() {
                Ok(server) => {
                    redis.server = Some(server);
                    return redis;
                }
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("redis-server did not start:\n{log}"),
            }
        }
        panic!("redis-server found no free port in five tries");
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data is gone: it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Closing standard input makes the guard stop the server; killing it as well is
            // safe, as its process is not reaped (and its id not reused) before `wait`.
            drop(server.stdin.take());
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Starts the server again on the same port after [`Redis::stop`], empty.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        let server = self
            .spawn()
            .unwrap_or_else(|log| panic!("redis-server did not start again:\n{log}"));
        self.server = Some(server);
    }

    /// Stops the server and starts it again on the same port, empty, as a restart without
    /// persistence does.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Deletes every key of every database.
    pub fn flushall(&self) {
        let reply = self.command("FLUSHALL");
        assert!(reply.starts_with("+OK"), "FLUSHALL answered {reply:?}");
    }

    /// How many clients wait in a blocking command.
    pub fn blocked_clients(&self) -> u64 {
        let info = self.command("INFO clients");
        info.lines()
            .find_map(|line| line.strip_prefix("blocked_clients:"))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO clients answered {info:?}"))
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("redis.log")).unwrap_or_default()
    }

    /// Starts the server on `self.port` and waits until it answers; its log when it exits
    /// first or does not answer within 10 s.
    fn spawn(&self) -> Result<Child, String> {
        let log = self.folder.path().join("redis.log");
        let _ = std::fs::remove_file(&log);
        let mut server = Command::new("sh")
            .args(["-c", GUARD, "sh"])
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.folder.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start redis-server: {error}; {INSTALL}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = server.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if self
                .try_command("PING")
                .is_some_and(|reply| reply.starts_with("+PONG"))
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                drop(server.stdin.take());
                let _ = server.kill();
                let _ = server.wait();
                return Err(format!("did not answer within 10 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's answer to an inline command (words separated by spaces).
    pub fn command(&self, command: &str) -> String {
        self.try_command(command)
            .unwrap_or_else(|| panic!("Redis did not answer {command}:\n{}", self.log()))
    }

    fn try_command(&self, command: &str) -> Option<String> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        // A reply is complete when the bytes a bulk string announces have arrived.
        let mut reply = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            let read = stream.read(&mut buffer).ok()?;
            if read == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..read]);
            if is_complete(&reply) {
                break;
            }
        }
        Some(String::from_utf8_lossy(&reply).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `reply` holds a whole simple reply (`+…`, `-…`, `:…`) or bulk string (`$n` and n
/// bytes).
fn is_complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|pair| pair == b"\r\n") else {
        return false;
    };
    match reply.first() {
        Some(b'$') => {
            let length: usize = String::from_utf8_lossy(&reply[1..end]).parse().unwrap_or(0);
            reply.len() >= end + 2 + length + 2
        }
        _ => true,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
