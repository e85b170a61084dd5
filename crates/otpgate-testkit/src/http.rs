//! Requests tests make of a server they started and whose answers they
//! read as JSON: one step from a request to its JSON body.

use std::future::Future;

use serde_json::Value;

/// `.reply_json().await` for `.send().await.unwrap().json().await.unwrap()`.
pub trait ReplyJson {
    /// Sends the request and reads its body as JSON.
    ///
    /// # Panics
    /// When the request fails or the body is not JSON.
    fn reply_json(self) -> impl Future<Output = Value> + Send;
}

impl ReplyJson for reqwest::RequestBuilder {
    async fn reply_json(self) -> Value {
        self.send()
            .await
            .expect("the request reaches the server")
            .json()
            .await
            .expect("a JSON body")
    }
}
