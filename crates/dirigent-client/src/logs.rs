//! The client's methods for the log store: a page of a search, a whole export, a live tail.

use dirigent_proto::log::{LogPage, LogRecord};
use reqwest::Method;

use crate::{Client, ClientError};

/// A search of the log store: the query parameters of `GET /api/v1/logs`, by name.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub q: Option<String>,
    pub source: Option<String>,
    pub level: Option<String>,
    pub robot: Option<String>,
    pub run: Option<String>,
    pub activity: Option<String>,
    pub agent: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub order: Option<String>,
    pub limit: Option<u32>,
}

impl LogFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("q", self.q.clone()),
            ("source", self.source.clone()),
            ("level", self.level.clone()),
            ("robot", self.robot.clone()),
            ("run", self.run.clone()),
            ("activity", self.activity.clone()),
            ("agent", self.agent.clone()),
            ("since", self.since.clone()),
            ("until", self.until.clone()),
            ("cursor", self.cursor.clone()),
            ("order", self.order.clone()),
            ("limit", self.limit.map(|limit| limit.to_string())),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect()
    }
}

impl Client {
    pub async fn logs(&self, filter: &LogFilter) -> Result<LogPage, ClientError> {
        self.call_query(Method::GET, &["api", "v1", "logs"], &filter.query())
            .await
    }

    /// Exports every record the filter matches, giving each NDJSON line to `on_line` as it
    /// comes.
    pub async fn export_logs(
        &self,
        filter: &LogFilter,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let mut response = self
            .get_streaming(&["api", "v1", "logs", "export"], &filter.query())
            .await?;
        let mut pending = Vec::new();
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|err| self.unreachable(&err))?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            pending.extend_from_slice(&chunk);
            while let Some(newline) = pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=newline).collect();
                on_line(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref());
            }
        }
    }

    /// Follows the log store live: the latest records that match, then each new one, given
    /// to `on_record` until the stream ends.
    pub async fn follow_log_records(
        &self,
        filter: &LogFilter,
        mut on_record: impl FnMut(LogRecord),
    ) -> Result<(), ClientError> {
        self.events(
            &["api", "v1", "logs", "stream"],
            &filter.query(),
            |event, data| match event {
                "record" => match serde_json::from_str(data) {
                    Ok(record) => {
                        on_record(record);
                        None
                    }
                    Err(err) => Some(Err(ClientError::Decode(err.to_string()))),
                },
                _ => None,
            },
        )
        .await
    }
}
