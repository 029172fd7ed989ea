//! `https://` and `http://`: a plain GET (no redirects), rustls with the system's roots for
//! TLS (the same rustls the S3 client uses). The body is streamed chunk by chunk.

use std::io::{self, Read};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::FetchError;
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
