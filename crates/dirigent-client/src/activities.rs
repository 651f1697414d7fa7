//! The client's methods for activities: asking, listing, waiting, following, cancelling.

use dirigent_proto::{
    activity::{Activity, ActivityRequest, Blob, CatalogEntry},
    run::LogLine,
};
use reqwest::Method;

use crate::{Client, ClientError};

/// Which activities to list.
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    pub state: Option<String>,
    pub target: Option<String>,
    pub operation: Option<String>,
    pub requested_by: Option<String>,
    pub before: Option<String>,
    pub limit: Option<u32>,
}

impl Client {
    pub async fn create_activity(
        &self,
        request: &ActivityRequest,
    ) -> Result<Activity, ClientError> {
        self.call(Method::POST, &["api", "v1", "activities"], Some(request))
            .await
    }

    pub async fn activities(&self, filter: &ActivityFilter) -> Result<Vec<Activity>, ClientError> {
        let query: Vec<(&str, String)> = [
            ("state", filter.state.clone()),
            ("target", filter.target.clone()),
            ("operation", filter.operation.clone()),
            ("requested_by", filter.requested_by.clone()),
            ("before", filter.before.clone()),
            ("limit", filter.limit.map(|limit| limit.to_string())),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect();
        self.call_query(Method::GET, &["api", "v1", "activities"], &query)
            .await
    }

    /// One activity; with `wait_seconds`, once it ended or the wait is over.
    pub async fn activity(
        &self,
        id: &str,
        wait_seconds: Option<u32>,
    ) -> Result<Activity, ClientError> {
        let query: Vec<(&str, String)> = wait_seconds
            .map(|wait| ("wait", wait.to_string()))
            .into_iter()
            .collect();
        self.call_query(Method::GET, &["api", "v1", "activities", id], &query)
            .await
    }

    pub async fn activity_catalog(&self) -> Result<Vec<CatalogEntry>, ClientError> {
        self.call(
            Method::GET,
            &["api", "v1", "activities", "catalog"],
            None::<&()>,
        )
        .await
    }

    /// Follows an activity's output until it ends; answers it as it ended.
    pub async fn follow_activity(
        &self,
        id: &str,
        on_line: impl FnMut(LogLine),
    ) -> Result<Activity, ClientError> {
        self.follow(
            &["api", "v1", "activities", id, "output", "stream"],
            0,
            on_line,
        )
        .await
    }

    pub async fn activity_output(&self, id: &str) -> Result<Vec<LogLine>, ClientError> {
        let query = [("limit", "10000".to_owned())];
        self.call_query(
            Method::GET,
            &["api", "v1", "activities", id, "output"],
            &query,
        )
        .await
    }

    /// Uploads a file for activities (a new agent binary); answers its SHA-256.
    pub async fn upload_blob(&self, content: Vec<u8>) -> Result<Blob, ClientError> {
        let bytes = self
            .send_raw(
                Method::POST,
                &["api", "v1", "blobs"],
                "application/octet-stream",
                content,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode(err.to_string()))
    }

    /// An uploaded file, as the agent an activity names it to downloads it (with its
    /// credential).
    pub async fn agent_blob(&self, sha256: &str) -> Result<Vec<u8>, ClientError> {
        self.send(Method::GET, &["agent", "v1", "blobs", sha256], None::<&()>)
            .await
    }

    pub async fn cancel_activity(&self, id: &str) -> Result<Activity, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "activities", id, "cancel"],
            None::<&()>,
        )
        .await
    }
}
