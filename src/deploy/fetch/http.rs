//! `https://` and `http://`: rustls with the system's roots for TLS (the same rustls the
//! S3 client uses), no redirects. One HEAD first: an object over [`ranges::RANGE`] from a
//! server that takes byte ranges and names a strong ETag is fetched as concurrent ranged
//! GETs pinned to that ETag ([`ranges`]); anything else (no ranges, a weak or no ETag, a
//! failed HEAD) is one GET, its body streamed chunk by chunk.

use std::io::{self, Read};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::FetchError;
use super::ranges::{self, Failure, STALL};
use super::stream::{self, Head};
use crate::cancel::Cancel;

pub fn open(url: String, cancel: &Cancel) -> Result<Box<dyn Read + Send>, FetchError> {
    let owned = url.clone();
    let reader = stream::spawn(&url, cancel, move |head, tx| async move {
        let builder = Client::builder(TokioExecutor::new());
        if owned.starts_with("https://") {
            let https = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
                Ok(b) => b.https_only().enable_http1().build(),
                Err(e) => {
                    return head.fail(FetchError::Other {
                        url: owned,
                        detail: format!("no TLS root certificates on this host: {e}"),
                    });
                }
            };
            get(builder.build(https), owned, head, tx).await
        } else {
            get(builder.build(HttpConnector::new()), owned, head, tx).await
        }
    })?;
    Ok(Box::new(reader))
}

async fn get<C>(
    client: Client<C, Empty<Bytes>>,
    url: String,
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
    let object = HttpObject {
        client,
        uri: uri.clone(),
        url,
    };
    if let Some((size, etag)) = object.ranged().await {
        head.ok(Some(size));
        return ranges::send_in_order(&object, size, Some(etag), &tx).await;
    }
    let HttpObject { client, url, .. } = object;
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
        404 => return head.fail(FetchError::HttpNotFound { url }),
        401 | 403 => {
            return head.fail(FetchError::AccessDenied {
                url,
                detail: format!("HTTP {status}"),
            });
        }
        _ => return head.fail(FetchError::HttpStatus { url, status }),
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
        let req = hyper::Request::head(self.uri.clone())
            .body(Empty::new())
            .ok()?;
        let resp = tokio::time::timeout(STALL, self.client.request(req))
            .await
            .ok()?
            .ok()?;
        let headers = resp.headers();
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let size: u64 = text(hyper::header::CONTENT_LENGTH)?.parse().ok()?;
        let ranges = text(hyper::header::ACCEPT_RANGES)? == "bytes";
        // A weak ETag (W/"...") cannot pin a range: If-Match compares strongly.
        let etag = text(hyper::header::ETAG).filter(|e| e.starts_with('"'))?;
        (resp.status() == 200 && ranges && size > ranges::RANGE).then(|| (size, etag.to_owned()))
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
