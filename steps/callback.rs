//! The in-process stand-in for pool-managerd's callback endpoint
//! (WORKER-4023, 4612, 4961): an axum server on a free port that records every
//! POST the worker makes, so scenarios can read the readiness announcement and
//! the status callback of a fatal error.

use axum::{body::Bytes, Router};
use serde_json::Value;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Callback {
    pub body: Value,
}

pub struct CallbackReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Callback>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CallbackReceiver {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<Callback>>> = Arc::default();
        let sink = received.clone();
        let app = Router::new().fallback(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let body = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
                sink.lock().expect("callback lock").push(Callback { body });
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the callback receiver");
        let port = listener
            .local_addr()
            .expect("callback receiver address")
            .port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://127.0.0.1:{port}/pool/callback"),
            received,
            task,
        }
    }

    pub fn all(&self) -> Vec<Callback> {
        self.received.lock().expect("callback lock").clone()
    }

    /// Wait up to `secs` for a callback whose `state` is `state`.
    pub async fn wait_for_state(&self, state: &str, secs: u64) -> Option<Callback> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(c) = self
                .all()
                .into_iter()
                .find(|c| c.body.get("state").and_then(Value::as_str) == Some(state))
            {
                return Some(c);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CallbackReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
