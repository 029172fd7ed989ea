//! `https://` and `http://`: rustls with the system's roots for TLS (the same rustls the
//! S3 client uses), no redirects. One HEAD first: an object over [`ranges::RANGE`] from a
//! server that takes byte ranges and names a strong ETag is fetched as concurrent ranged
//! GETs pinned to that ETag ([`ranges`]); anything else (no ranges, a weak or no ETag, a
//! failed HEAD) is one GET, its body streamed chunk by chunk. A ranged fetch whose event
//! pins a chunk index asks peers first, as from S3 ([`super::peers`]): the index is
//! `URL.chunks`, as `publish` writes it beside a file.

use std::io::{self, Read};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use hyper_rustls::HttpsConnector;

use super::peers::{self, Peers};
use super::ranges::{self, Failure, STALL};
use super::stream::{self, Head};
use super::{FetchError, FetchOptions};
use crate::cancel::Cancel;

pub fn open(
    url: String,
    opts: &FetchOptions,
    cancel: &Cancel,
) -> Result<Box<dyn Read + Send>, FetchError> {
    let owned = url.clone();
    let peers = opts.peers.clone();
    let reader = stream::spawn(&url, cancel, move |head, tx| async move {
        let peers = peers.as_ref();
        match client(&owned) {
            Ok(Http::Tls(c)) => get(c, owned, peers, head, tx).await,
            Ok(Http::Plain(c)) => get(c, owned, peers, head, tx).await,
            Err(e) => head.fail(e),
        }
    })?;
    Ok(Box::new(reader))
}

/// A small object beside an artifact (its digest sidecar or chunk index), at most `max`
/// bytes: `None` when the server has none (HTTP 404).
pub async fn small_object(url: &str, max: usize) -> Result<Option<Bytes>, FetchError> {
    let got = match client(url)? {
        Http::Tls(c) => small(&c, url, max).await,
        Http::Plain(c) => small(&c, url, max).await,
    };
    got.map_err(|detail| FetchError::Other {
        url: url.into(),
        detail,
    })
}

/// Whether the server has the object at `url`: a HEAD answered 2xx (true) or 404 (false);
/// any other answer is an error that names it.
pub async fn exists(url: &str) -> Result<bool, FetchError> {
    let other = |detail| FetchError::Other {
        url: url.into(),
        detail,
    };
    let uri: hyper::Uri = url.parse().map_err(|e| other(format!("not a URL: {e}")))?;
    let got = match client(url)? {
        Http::Tls(c) => head_request(&c, uri).await,
        Http::Plain(c) => head_request(&c, uri).await,
    };
    match got.map_err(other)?.status().as_u16() {
        200..=299 => Ok(true),
        404 => Ok(false),
        status => Err(status_error(url.into(), status)),
    }
}

/// What a server's answer `status` (not a success) says of the object at `url`.
fn status_error(url: String, status: u16) -> FetchError {
    match status {
        404 => FetchError::HttpNotFound { url },
        401 | 403 => FetchError::AccessDenied {
            url,
            detail: format!("HTTP {status}"),
        },
        _ => FetchError::HttpStatus { url, status },
    }
}

/// `url` with `suffix` on its path (before any query or fragment): where `publish` puts
/// the sidecars of a file served as it is.
pub fn beside_url(url: &str, suffix: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    format!("{}{suffix}{}", &url[..end], &url[end..])
}

/// How long reading a small object may take in all.
const SMALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// A HEAD of `uri`, answered within [`STALL`].
async fn head_request<C>(
    client: &Client<C, Empty<Bytes>>,
    uri: hyper::Uri,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let req = hyper::Request::head(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    (tokio::time::timeout(STALL, client.request(req)).await)
        .map_err(|_| format!("no answer within {STALL:?}"))?
        .map_err(|e| e.to_string())
}

/// A client for one URL: TLS with the system's roots for `https://`, none for `http://`.
enum Http {
    Tls(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>),
    Plain(Client<HttpConnector, Empty<Bytes>>),
}

fn client(url: &str) -> Result<Http, FetchError> {
    let builder = Client::builder(TokioExecutor::new());
    if !url.starts_with("https://") {
        return Ok(Http::Plain(builder.build(HttpConnector::new())));
    }
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| FetchError::Other {
            url: url.into(),
            detail: format!("no TLS root certificates on this host: {e}"),
        })?;
    Ok(Http::Tls(
        builder.build(https.https_only().enable_http1().build()),
    ))
}

/// GET of a small object: exactly its Content-Length, at most `max`, within
/// [`SMALL_DEADLINE`]; `None` on 404.
async fn small<C>(
    client: &Client<C, Empty<Bytes>>,
    url: &str,
    max: usize,
) -> Result<Option<Bytes>, String>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let read = async {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let resp = (tokio::time::timeout(STALL, client.get(uri)).await)
            .map_err(|_| format!("no answer within {STALL:?}"))?
            .map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            status => return Err(format!("HTTP {status}; expected 200")),
        }
        let length = (resp.headers().get(hyper::header::CONTENT_LENGTH))
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .ok_or("the server sent no Content-Length (one is needed for a small object)")?;
        if length > max {
            return Err(format!(
                "{length} bytes, over the {max} such a file may hold"
            ));
        }
        let body = http_body_util::BodyDataStream::new(resp.into_body());
        match ranges::gather("the body", length, body).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Failure::Transient(why) | Failure::Final(why)) => Err(why),
        }
    };
    (tokio::time::timeout(SMALL_DEADLINE, read).await)
        .map_err(|_| format!("not read within {SMALL_DEADLINE:?}"))?
}

async fn get<C>(
    client: Client<C, Empty<Bytes>>,
    url: String,
    peers: Option<&Peers>,
    head: Head,
    tx: mpsc::Sender<io::Result<Bytes>>,
) where
    C: Connect + Clone + Send + Sync + 'static,
{
    let uri: hyper::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            return head.fail(FetchError::BadUrl {
                url,
                reason: e.to_string(),
            });
        }
    };
    let object = HttpObject { client, uri, url };
    if let Some((size, etag)) = object.ranged().await {
        head.ok(Some(size));
        let etag = Some(etag);
        return match peers::in_front(peers, &object, size, object.index_bytes()).await {
            Some(from) => ranges::send_in_order(&from, size, etag, &tx).await,
            None => ranges::send_in_order(&object, size, etag, &tx).await,
        };
    }
    // Taken whole: no pieces for peers, who are told so at once.
    let why = "the server takes no byte ranges or names no strong ETag";
    peers::store_alone(peers, &object.url, why);
    get_whole(object, head, tx).await
}

/// The object by one plain GET, its body streamed to `tx` as it arrives.
async fn get_whole<C>(object: HttpObject<C>, head: Head, tx: mpsc::Sender<io::Result<Bytes>>)
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let HttpObject { client, uri, url } = object;
    let resp = match client.get(uri.clone()).await {
        Ok(r) => r,
        Err(e) => {
            let detail = std::error::Error::source(&e)
                .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
            return head.fail(FetchError::Unreachable {
                endpoint: uri.authority().map_or(String::new(), |a| a.to_string()),
                url,
                detail,
            });
        }
    };
    let status = resp.status().as_u16();
    // The body must be as long as the server says (hyper stops at the length; a body cut
    // short is caught by the stream).
    let length = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match status {
        200 => head.ok(length),
        _ => return head.fail(status_error(url, status)),
    }
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let item = match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue,
            },
            Err(e) => Err(super::stream::cut_off(format!("{url}: {e}"))),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// One object on one HTTP server.
struct HttpObject<C> {
    client: Client<C, Empty<Bytes>>,
    uri: hyper::Uri,
    url: String,
}

impl<C: Connect + Clone + Send + Sync + 'static> HttpObject<C> {
    /// Its size and strong ETag, by one HEAD, if it is worth fetching in ranges: larger
    /// than one range, from a server that says it takes byte ranges.
    async fn ranged(&self) -> Option<(u64, String)> {
        let resp = head_request(&self.client, self.uri.clone()).await.ok()?;
        let headers = resp.headers();
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let size: u64 = text(hyper::header::CONTENT_LENGTH)?.parse().ok()?;
        let ranges = text(hyper::header::ACCEPT_RANGES)? == "bytes";
        // A weak ETag (W/"...") cannot pin a range: If-Match compares strongly.
        let etag = text(hyper::header::ETAG).filter(|e| e.starts_with('"'))?;
        (resp.status() == 200 && ranges && size > ranges::RANGE).then(|| (size, etag.to_owned()))
    }

    /// The chunk index beside it (`URL.chunks`), at most
    /// [`crate::fanout::index::MAX_ENCODED`] bytes.
    async fn index_bytes(&self) -> Result<Vec<u8>, String> {
        use crate::fanout::index::{MAX_ENCODED, SUFFIX};
        let url = beside_url(&self.url, SUFFIX);
        match small(&self.client, &url, MAX_ENCODED).await {
            Ok(Some(bytes)) => Ok(bytes.to_vec()),
            Ok(None) => Err(format!("{url}: not found (HTTP 404)")),
            Err(why) => Err(format!("{url}: {why}")),
        }
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> ranges::RangeSource for HttpObject<C> {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get_range(&self, start: u64, end: u64, etag: Option<&str>) -> Result<Bytes, Failure> {
        let what = format!("{}: bytes {start}-{}", self.url, end - 1);
        let mut req = hyper::Request::get(self.uri.clone())
            .header(hyper::header::RANGE, format!("bytes={start}-{}", end - 1));
        if let Some(etag) = etag {
            req = req.header(hyper::header::IF_MATCH, etag);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| Failure::Final(format!("{what}: {e}")))?;
        let resp = (tokio::time::timeout(STALL, self.client.request(req)).await)
            .map_err(|_| ranges::stalled(&what))?
            .map_err(|e| Failure::Transient(format!("{what}: {e}")))?;
        let want_range = format!("bytes {start}-{}/", end - 1);
        match resp.status().as_u16() {
            206 => {}
            412 => return Err(Failure::Final(ranges::changed(&what))),
            status @ (429 | 500 | 502..=504) => {
                return Err(Failure::Transient(format!("{what}: HTTP {status}")));
            }
            status => return Err(Failure::Final(format!("{what}: HTTP {status}"))),
        }
        let got_range = resp.headers().get(hyper::header::CONTENT_RANGE);
        if !got_range.is_some_and(|r| r.as_bytes().starts_with(want_range.as_bytes())) {
            return Err(Failure::Final(format!(
                "{what}: the server answered another range ({got_range:?})"
            )));
        }
        let body = http_body_util::BodyDataStream::new(resp.into_body());
        ranges::gather(&what, (end - start) as usize, body).await
    }
}
