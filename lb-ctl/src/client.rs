//! The daemon's HTTP/JSON API (docs/api.md) over its unix socket or, with `--url`,
//! over TCP with a bearer token. hyper 1 client, one connection per request.

use std::{path::PathBuf, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, StatusCode, Uri,
    body::Bytes,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
    runtime::Runtime,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a request failed.
#[derive(Debug)]
pub enum ApiError {
    /// No answer: the socket is missing, refused, timed out, or the answer was not HTTP.
    Unreachable(String),
    /// The daemon answered with an error status; the text is its `error` field.
    Status(StatusCode, String),
}

pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        /// `host:port` to connect to.
        addr: String,
        /// Path prefix from the URL (usually empty).
        prefix: String,
    },
}

impl Endpoint {
    /// `--url http://host[:port][/prefix]`
    pub fn from_url(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => {
                return Err(format!(
                    "--url {url:?}: scheme {s} is not supported (http only; put TLS in front if needed)"
                ));
            }
            None => return Err(format!("--url {url:?}: expected http://host:port")),
        }
        let auth = uri
            .authority()
            .ok_or_else(|| format!("--url {url:?}: no host"))?;
        let addr = match auth.port_u16() {
            Some(_) => auth.as_str().to_string(),
            None => format!("{}:80", auth.as_str()),
        };
        Ok(Endpoint::Tcp {
            addr,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}"),
        }
    }
}

pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    rt: Runtime,
}

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Result<Client, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        Ok(Client {
            endpoint,
            token,
            rt,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.request(Method::GET, path, None)
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.request(Method::PUT, path, Some(body))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.request(Method::POST, path, Some(body))
    }

    fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let body = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).expect("JSON values serialize")),
            None => Bytes::new(),
        };
        self.rt.block_on(async {
            match &self.endpoint {
                Endpoint::Unix(p) => {
                    let s = connect(UnixStream::connect(p)).await?;
                    self.exchange(s, "localhost", method, path, body).await
                }
                Endpoint::Tcp { addr, prefix } => {
                    let s = connect(TcpStream::connect(addr.as_str())).await?;
                    let path = format!("{prefix}{path}");
                    self.exchange(s, addr, method, &path, body).await
                }
            }
        })
    }

    async fn exchange<S>(
        &self,
        stream: S,
        host: &str,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Value, ApiError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let unreachable = |e: &dyn std::fmt::Display| ApiError::Unreachable(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host);
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ApiError::Unreachable(format!("bad request {path:?}: {e}")))?;
        let answer = async {
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(&e))?;
            let status = res.status();
            let bytes = res
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            Ok::<_, ApiError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, answer)
            .await
            .map_err(|_| {
                ApiError::Unreachable(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
            })??;
        let value: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return match value {
                Some(v) => Ok(v),
                None if bytes.is_empty() => Ok(Value::Null),
                None => Err(ApiError::Unreachable(format!(
                    "the answer to {path} is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                ))),
            };
        }
        let text = match value
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
        {
            Some(e) => e.to_string(),
            None if bytes.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
            None => String::from_utf8_lossy(&bytes).trim().to_string(),
        };
        Err(ApiError::Status(status, text))
    }
}

async fn connect<S, F>(f: F) -> Result<S, ApiError>
where
    F: std::future::Future<Output = std::io::Result<S>>,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ApiError::Unreachable(e.to_string())),
        Err(_) => Err(ApiError::Unreachable(format!(
            "connection timed out after {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
