//! Frames of runs' screens: thumbnails taken while a run that needs a display runs, and the
//! screen it ended on.

use jiff::Timestamp;

use crate::{BeginWrite, Store, StoreResult, dispatch, from_millis, to_millis};

/// How many frames a run keeps, besides its last: the oldest go first.
const KEPT_FRAMES: i64 = 60;

/// A stored frame, without its picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameInfo {
    pub seq: u64,
    pub at: Timestamp,
    /// The screen the run ended on.
    pub last: bool,
    pub bytes: u64,
}

impl Store {
    /// Keeps a frame of a run's screen (a PNG); a run keeps its newest frames only.
    pub async fn add_run_frame(
        &self,
        run_id: &str,
        at: Timestamp,
        png: &[u8],
        last: bool,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let seq: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM run_frames WHERE run_id = $1",
            )
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO run_frames (run_id, seq, at, last, png) VALUES ($1, $2, $3, $4, $5)")
                .bind(run_id)
                .bind(seq)
                .bind(to_millis(at))
                .bind(last)
                .bind(png)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM run_frames WHERE run_id = $1 AND NOT last AND seq <= $2")
                .bind(run_id)
                .bind(seq - KEPT_FRAMES)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// A run's frames, oldest first.
    pub async fn run_frames(&self, run_id: &str) -> StoreResult<Vec<FrameInfo>> {
        let rows: Vec<(i64, i64, bool, i64)> = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT seq, at, last, CAST(LENGTH(png) AS BIGINT) FROM run_frames WHERE run_id = $1 \
                 ORDER BY seq",
            )
            .bind(run_id)
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter()
            .map(|(seq, at, last, bytes)| {
                Ok(FrameInfo {
                    seq: u64::try_from(seq).unwrap_or(0),
                    at: from_millis("at", at)?,
                    last,
                    bytes: u64::try_from(bytes).unwrap_or(0),
                })
            })
            .collect()
    }

    /// One frame's PNG; `NotFound` when the run has no such frame.
    pub async fn run_frame(&self, run_id: &str, seq: u64) -> StoreResult<Vec<u8>> {
        let png: Vec<u8> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT png FROM run_frames WHERE run_id = $1 AND seq = $2")
                .bind(run_id)
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .fetch_one(pool)
                .await
        })?;
        Ok(png)
    }
}
