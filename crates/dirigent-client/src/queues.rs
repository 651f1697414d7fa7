//! The client's methods for work-item queues.

use dirigent_proto::queue::{
    AbandonRequest, AddItems, AddedItems, BulkResult, Claim, ClaimRequest, Claims, CompleteItems,
    CompleteRequest, CompletedItems, FailRequest, Item, ItemFilter, LeaseRequest, PostponeRequest,
    Queue, QueueSpec,
};
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    pub async fn queues(&self) -> Result<Vec<Queue>, ClientError> {
        self.call(Method::GET, &["api", "v1", "queues"], None::<&()>)
            .await
    }

    pub async fn queue(&self, name: &str) -> Result<Queue, ClientError> {
        self.call(Method::GET, &["api", "v1", "queues", name], None::<&()>)
            .await
    }

    pub async fn create_queue(&self, spec: &QueueSpec) -> Result<Queue, ClientError> {
        self.call(Method::POST, &["api", "v1", "queues"], Some(spec))
            .await
    }

    pub async fn replace_queue(&self, name: &str, spec: &QueueSpec) -> Result<Queue, ClientError> {
        self.call(Method::PUT, &["api", "v1", "queues", name], Some(spec))
            .await
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["api", "v1", "queues", name], None::<&()>)
            .await
    }

    pub async fn add_items(
        &self,
        queue: &str,
        items: &AddItems,
    ) -> Result<AddedItems, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "queues", queue, "items"],
            Some(items),
        )
        .await
    }

    /// Claims the next ready item; `None` when no item is ready.
    pub async fn claim(&self, queue: &str) -> Result<Option<Claim>, ClientError> {
        self.claim_from(&["api", "v1", "queues", queue, "claim"], None::<&()>)
            .await
    }

    /// Claims up to `count` ready items under one lease; `None` when no item is ready.
    pub async fn claim_items(
        &self,
        queue: &str,
        count: u32,
    ) -> Result<Option<Claims>, ClientError> {
        let request = ClaimRequest { count };
        self.claim_from(&["api", "v1", "queues", queue, "claims"], Some(&request))
            .await
    }

    /// Posts a claim; `None` when the server answers that no item is ready (no content).
    async fn claim_from<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        body: Option<&impl serde::Serialize>,
    ) -> Result<Option<T>, ClientError> {
        let bytes = self.send(Method::POST, segments, body).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| ClientError::Decode(err.to_string()))
    }

    /// Completes several claimed items, each on its own.
    pub async fn complete_items(
        &self,
        queue: &str,
        request: &CompleteItems,
    ) -> Result<CompletedItems, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "queues", queue, "items", "complete"],
            Some(request),
        )
        .await
    }

    /// Lists a queue's items; `query` holds the filters and paging of the route.
    pub async fn items(
        &self,
        queue: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Item>, ClientError> {
        self.call_query(Method::GET, &["api", "v1", "queues", queue, "items"], query)
            .await
    }

    pub async fn item(&self, queue: &str, id: i64) -> Result<Item, ClientError> {
        let id = id.to_string();
        self.call(
            Method::GET,
            &["api", "v1", "queues", queue, "items", &id],
            None::<&()>,
        )
        .await
    }

    pub async fn extend_lease(
        &self,
        queue: &str,
        id: i64,
        request: &LeaseRequest,
    ) -> Result<Item, ClientError> {
        self.item_operation(queue, id, "extend", request).await
    }

    pub async fn complete_item(
        &self,
        queue: &str,
        id: i64,
        request: &CompleteRequest,
    ) -> Result<Item, ClientError> {
        self.item_operation(queue, id, "complete", request).await
    }

    pub async fn fail_item(
        &self,
        queue: &str,
        id: i64,
        request: &FailRequest,
    ) -> Result<Item, ClientError> {
        self.item_operation(queue, id, "fail", request).await
    }

    pub async fn postpone_item(
        &self,
        queue: &str,
        id: i64,
        request: &PostponeRequest,
    ) -> Result<Item, ClientError> {
        self.item_operation(queue, id, "postpone", request).await
    }

    pub async fn abandon_item(
        &self,
        queue: &str,
        id: i64,
        request: &AbandonRequest,
    ) -> Result<Item, ClientError> {
        self.item_operation(queue, id, "abandon", request).await
    }

    pub async fn requeue_item(&self, queue: &str, id: i64) -> Result<Item, ClientError> {
        let id = id.to_string();
        self.call(
            Method::POST,
            &["api", "v1", "queues", queue, "items", &id, "requeue"],
            None::<&()>,
        )
        .await
    }

    pub async fn delete_item(&self, queue: &str, id: i64) -> Result<Item, ClientError> {
        let id = id.to_string();
        self.call(
            Method::DELETE,
            &["api", "v1", "queues", queue, "items", &id],
            None::<&()>,
        )
        .await
    }

    pub async fn requeue_items(
        &self,
        queue: &str,
        filter: &ItemFilter,
    ) -> Result<BulkResult, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "queues", queue, "items", "requeue"],
            Some(filter),
        )
        .await
    }

    pub async fn delete_items(
        &self,
        queue: &str,
        filter: &ItemFilter,
    ) -> Result<BulkResult, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "queues", queue, "items", "delete"],
            Some(filter),
        )
        .await
    }

    async fn item_operation(
        &self,
        queue: &str,
        id: i64,
        operation: &str,
        body: &impl serde::Serialize,
    ) -> Result<Item, ClientError> {
        let id = id.to_string();
        self.call(
            Method::POST,
            &["api", "v1", "queues", queue, "items", &id, operation],
            Some(body),
        )
        .await
    }
}
