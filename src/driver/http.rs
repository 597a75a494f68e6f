//! Just enough HTTP/1.1 to smoke-test an instance, and for `plan --state` to read a daemon's
//! state: one request per connection, a time limit, and a cap on what is read.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Responses larger than this are cut off.
const MAX_RESPONSE: u64 = 1 << 20;

/// Sends `method path` with an optional JSON body to `address` (`HOST:PORT`) and returns the
/// status code and the body.
pub async fn request(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String), String> {
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    let (status, body) = send(
        address,
        &Exchange {
            method,
            path,
            headers: &[("Content-Type", "application/json")],
            body: body.as_bytes(),
            max_response: MAX_RESPONSE,
            limit: Duration::from_secs(10),
        },
    )
    .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request: what is sent, and how much of the answer, and for how long, is waited for.
pub struct Exchange<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    /// Answers longer than this are cut off (and then fail to parse, as they should).
    pub max_response: u64,
    pub limit: Duration,
}

/// Sends `exchange` to `address` and returns the status code and the body's bytes.
///
/// # Errors
/// In words, when the server cannot be reached, does not answer HTTP, or takes longer than
/// the exchange's limit.
pub async fn send(address: &str, exchange: &Exchange<'_>) -> Result<(u16, Vec<u8>), String> {
    let (method, path) = (exchange.method, exchange.path);
    tokio::time::timeout(exchange.limit, send_now(address, exchange))
        .await
        .map_err(|_| {
            format!(
                "{method} {path} on {address} took more than {} s",
                exchange.limit.as_secs()
            )
        })?
}

async fn send_now(address: &str, exchange: &Exchange<'_>) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        exchange.method,
        exchange.path,
        exchange.body.len()
    );
    for (name, value) in exchange.headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("sending to {address}: {error}"))?;
    stream
        .write_all(exchange.body)
        .await
        .map_err(|error| format!("sending to {address}: {error}"))?;
    let mut response = Vec::new();
    stream
        .take(exchange.max_response)
        .read_to_end(&mut response)
        .await
        .map_err(|error| format!("reading from {address}: {error}"))?;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let body = response.get(split + 4..).unwrap_or_default();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{address} did not answer HTTP"))?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// The body of a chunked response; what follows a malformed chunk is dropped.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = rest.windows(2).position(|window| window == b"\r\n") {
        let size = std::str::from_utf8(&rest[..end]).ok().and_then(|size| {
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).ok()
        });
        let Some(size) = size else {
            break;
        };
        rest = &rest[end + 2..];
        let Some(chunk) = rest.get(..size).filter(|_| size > 0) else {
            break;
        };
        body.extend_from_slice(chunk);
        rest = rest.get(size..).unwrap_or_default();
        rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"),
            b"Wikipedia"
        );
        assert_eq!(dechunk(b"zz\r\n"), b"");
        // A size that cuts a character in two, or runs past the end, is no panic.
        assert_eq!(dechunk("1\r\né\r\n".as_bytes()), [0xc3]);
        assert_eq!(dechunk(b"ff\r\nshort"), b"");
    }
}
