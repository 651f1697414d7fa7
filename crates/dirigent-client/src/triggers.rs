//! The client's methods for triggers and calendars.

use dirigent_proto::trigger::{Calendar, CalendarSpec, FireTime, Firing, Trigger, TriggerSpec};
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    pub async fn triggers(&self, robot: Option<&str>) -> Result<Vec<Trigger>, ClientError> {
        let query: Vec<(&str, String)> = robot
            .map(|robot| ("robot", robot.to_owned()))
            .into_iter()
            .collect();
        self.call_query(Method::GET, &["api", "v1", "triggers"], &query)
            .await
    }

    pub async fn trigger(&self, id: &str) -> Result<Trigger, ClientError> {
        self.call(Method::GET, &["api", "v1", "triggers", id], None::<&()>)
            .await
    }

    pub async fn create_trigger(&self, spec: &TriggerSpec) -> Result<Trigger, ClientError> {
        self.call(Method::POST, &["api", "v1", "triggers"], Some(spec))
            .await
    }

    pub async fn replace_trigger(
        &self,
        id: &str,
        spec: &TriggerSpec,
    ) -> Result<Trigger, ClientError> {
        self.call(Method::PUT, &["api", "v1", "triggers", id], Some(spec))
            .await
    }

    pub async fn delete_trigger(&self, id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["api", "v1", "triggers", id], None::<&()>)
            .await
    }

    /// Enables (`true`) or disables a trigger.
    pub async fn set_trigger_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<Trigger, ClientError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.call(
            Method::POST,
            &["api", "v1", "triggers", id, verb],
            None::<&()>,
        )
        .await
    }

    pub async fn preview_trigger(
        &self,
        id: &str,
        from: Option<jiff::Timestamp>,
        count: usize,
    ) -> Result<Vec<FireTime>, ClientError> {
        let mut query = vec![("count", count.to_string())];
        if let Some(from) = from {
            query.push(("from", from.to_string()));
        }
        self.call_query(
            Method::GET,
            &["api", "v1", "triggers", id, "preview"],
            &query,
        )
        .await
    }

    pub async fn trigger_firings(&self, id: &str, limit: u32) -> Result<Vec<Firing>, ClientError> {
        let query = [("limit", limit.to_string())];
        self.call_query(
            Method::GET,
            &["api", "v1", "triggers", id, "firings"],
            &query,
        )
        .await
    }

    pub async fn calendars(&self) -> Result<Vec<Calendar>, ClientError> {
        self.call(Method::GET, &["api", "v1", "calendars"], None::<&()>)
            .await
    }

    pub async fn calendar(&self, name: &str) -> Result<Calendar, ClientError> {
        self.call(Method::GET, &["api", "v1", "calendars", name], None::<&()>)
            .await
    }

    pub async fn create_calendar(&self, spec: &CalendarSpec) -> Result<Calendar, ClientError> {
        self.call(Method::POST, &["api", "v1", "calendars"], Some(spec))
            .await
    }

    pub async fn replace_calendar(
        &self,
        name: &str,
        spec: &CalendarSpec,
    ) -> Result<Calendar, ClientError> {
        self.call(Method::PUT, &["api", "v1", "calendars", name], Some(spec))
            .await
    }

    pub async fn delete_calendar(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(
            Method::DELETE,
            &["api", "v1", "calendars", name],
            None::<&()>,
        )
        .await
    }
}
