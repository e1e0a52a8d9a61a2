//! Write-back transfers and the transfer policy: the contract's `transfers` query,
//! `setTransferPolicy`, and the additions `transferPolicy`, `TransferConnection.summary`.
//!
//! `transfers` reads the `transfers` journal the uploader writes. Order of the list:
//! UPLOADING first, then QUEUED, each in queue order (priority, then oldest first: the journal
//! id); then the finished ones (DONE, FAILED, SUPERSEDED) together, newest first. A `state`
//! argument keeps one state (a finished one still newest first). Cursors are keyset positions, so a page
//! is stable against rows added elsewhere; a transfer that changes state between two pages
//! moves to another group and may be skipped or shown twice, as in any live queue.

use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject, ID};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};
use milepost_cacher::transfer_policy::{
    DownloadSchedule, PolicyError, PolicyErrorKind, TransferPolicy,
};
use milepost_schema::entity::transfer;
use milepost_schema::enums::{self, Role};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::scalars::{Long, TransferOp, TransferState};
use super::types::PageInfo;
use super::{page_limit, principal, state};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, GqlResultExt};
use async_graphql::Result as GqlResult;

/// One write-back upload (or delete) of the journal.
#[derive(Debug)]
pub struct Transfer(pub transfer::Model);

#[Object]
impl Transfer {
    /// The journal id (its position in the journal), as a string.
    pub async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// PUT uploads an object, DELETE removes it upstream.
    async fn op(&self) -> TransferOp {
        self.0.op.into()
    }
    async fn bucket(&self) -> &str {
        &self.0.bucket
    }
    async fn key(&self) -> &str {
        &self.0.key
    }
    async fn size(&self) -> Long {
        Long(self.0.size)
    }
    async fn state(&self) -> TransferState {
        self.0.state.into()
    }
    /// Lower uploads first: the index of the first priority glob the key matched.
    async fn priority(&self) -> i32 {
        self.0.priority
    }
    async fn bytes_done(&self) -> Long {
        Long(self.0.bytes_done)
    }
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    async fn enqueued_at(&self) -> DateTime<Utc> {
        self.0.enqueued_at
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

#[derive(SimpleObject, Debug)]
pub struct TransferEdge {
    pub cursor: String,
    pub node: Transfer,
}

#[derive(SimpleObject, Debug)]
#[graphql(complex)]
pub struct TransferConnection {
    pub total_count: i32,
    pub edges: Vec<TransferEdge>,
    pub page_info: PageInfo,
}

#[ComplexObject]
impl TransferConnection {
    /// The whole queue (whatever `state` selected): what is left, how fast it moves, the
    /// limit in force and an estimate of when it is done.
    async fn summary(&self, ctx: &Context<'_>) -> GqlResult<TransferSummary> {
        summary(state(ctx)).await.gql()
    }
}

/// The upload queue at a glance.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct TransferSummary {
    /// Transfers waiting for their turn.
    pub queued_count: i32,
    /// Bytes the queued transfers still have to upload.
    pub queued_bytes: Long,
    /// Transfers being uploaded now.
    pub uploading_count: i32,
    /// Bytes the uploading transfers still have to upload.
    pub uploading_bytes: Long,
    pub done_count: i32,
    pub failed_count: i32,
    /// Bytes per second uploaded over the last five seconds.
    pub rate_bytes_per_second: f64,
    /// The upload limit in force now, in bytes per second; null = unlimited.
    pub limit_bytes_per_second: Option<Long>,
    /// Seconds until the queue is empty at the current rate (at the limit when nothing moves
    /// yet); 0 when nothing is left; null when it cannot be told (nothing moves, no limit).
    pub eta_seconds: Option<f64>,
}

/// The transfer policy in force.
#[derive(Debug)]
pub struct TransferPolicyView {
    policy: std::sync::Arc<TransferPolicy>,
    /// The office's local time when the view was made.
    local_now: NaiveDateTime,
    /// The download windows of reservations with a deadline (`[transfer] download_schedule`).
    downloads: DownloadSchedule,
}

#[Object(name = "TransferPolicy")]
impl TransferPolicyView {
    /// rclone-style timetable in the office's local time, canonical form, e.g.
    /// "Mon-Fri 09:00-18:00 20MiB; * off" (off = unlimited).
    async fn upload_schedule(&self) -> String {
        self.policy.schedule.to_string()
    }
    /// Glob patterns in priority order: the first matching pattern uploads first.
    async fn priorities(&self) -> &[String] {
        &self.policy.priorities
    }
    /// The limit the schedule gives now, in bytes per second; null = unlimited.
    async fn limit_bytes_per_second(&self) -> Option<Long> {
        self.policy
            .schedule
            .rate_at(self.local_now)
            .map(|rate| Long(i64::try_from(rate).unwrap_or(i64::MAX)))
    }
    /// The download windows of reservations with a deadline (`readyBy`), canonical form:
    /// a time some rule matches is open at its rate (off = full speed), other times closed.
    async fn download_schedule(&self) -> String {
        self.downloads.to_string()
    }
    /// The download window now: "closed", "unlimited" or a rate such as "50MiB/s".
    async fn download_window(&self) -> String {
        self.downloads.describe_at(self.local_now)
    }
    /// When the schedule next gives another limit; null when it never does.
    async fn next_change_at(&self) -> Option<DateTime<Utc>> {
        let at = self.policy.schedule.next_change_after(self.local_now)?;
        // The office's local time is the process's time zone; in a DST gap, the first
        // instant after it.
        chrono::Local
            .from_local_datetime(&at)
            .earliest()
            .or_else(|| {
                chrono::Local
                    .from_local_datetime(&(at + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map(|local| local.with_timezone(&Utc))
    }
}

#[derive(InputObject, Debug)]
pub struct TransferPolicyInput {
    /// E.g. "Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off".
    pub upload_schedule: String,
    /// Key globs, first match uploads first, e.g. ["*.json", "*.mcap", "*"].
    pub priorities: Vec<String>,
}

fn policy_view(app: &AppState) -> TransferPolicyView {
    TransferPolicyView {
        policy: app.transfer_policy.current(),
        local_now: app.transfer_policy.local_now(),
        downloads: app.reservations.download_schedule().clone(),
    }
}

/// The input field a policy error is about.
fn policy_error(err: PolicyError) -> ApiError {
    let field = match (err.kind(), err.priority_index()) {
        (PolicyErrorKind::Schedule, _) => "input.uploadSchedule".to_owned(),
        (PolicyErrorKind::Priorities, Some(i)) => format!("input.priorities[{i}]"),
        (PolicyErrorKind::Priorities, None) => "input.priorities".to_owned(),
    };
    ApiError::bad_input(field, err.to_string())
}

fn db_error(err: sea_orm::DbErr) -> ApiError {
    ApiError::from(milepost_schema::DbError::from(err))
}

/// The groups of the list, in order (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Uploading = 0,
    Queued = 1,
    Finished = 2,
}

impl Group {
    fn from_index(index: u8) -> Option<Group> {
        [Group::Uploading, Group::Queued, Group::Finished]
            .get(usize::from(index))
            .copied()
    }
}

/// A position in the list: the group, then (priority, id) in the queue groups or the id in
/// the finished one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    group: Group,
    priority: i32,
    id: i64,
}

const CURSOR_KIND: &str = "transfer";

fn encode_cursor(row: &transfer::Model) -> String {
    let group = match row.state {
        enums::TransferState::Uploading => Group::Uploading,
        enums::TransferState::Queued => Group::Queued,
        enums::TransferState::Done
        | enums::TransferState::Failed
        | enums::TransferState::Superseded => Group::Finished,
    };
    URL_SAFE_NO_PAD.encode(format!(
        "{CURSOR_KIND}:{}:{}:{}",
        group as u8, row.priority, row.id
    ))
}

fn decode_cursor(cursor: &str) -> Option<Position> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim_end_matches('=')).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != CURSOR_KIND {
        return None;
    }
    let position = Position {
        group: Group::from_index(parts.next()?.parse().ok()?)?,
        priority: parts.next()?.parse().ok()?,
        id: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(position)
}

/// The groups a `state` argument lists, each with the states it holds.
fn groups(wanted: Option<enums::TransferState>) -> Vec<(Group, Vec<enums::TransferState>)> {
    use enums::TransferState as S;
    match wanted {
        None => vec![
            (Group::Uploading, vec![S::Uploading]),
            (Group::Queued, vec![S::Queued]),
            (Group::Finished, vec![S::Done, S::Failed, S::Superseded]),
        ],
        Some(S::Uploading) => vec![(Group::Uploading, vec![S::Uploading])],
        Some(S::Queued) => vec![(Group::Queued, vec![S::Queued])],
        Some(state) => vec![(Group::Finished, vec![state])],
    }
}

/// One page of the list: rows and whether more follow.
pub async fn transfers_page(
    app: &AppState,
    wanted: Option<enums::TransferState>,
    after: Option<&str>,
    limit: u64,
) -> ApiResult<(Vec<transfer::Model>, bool)> {
    let groups = groups(wanted);
    let after = after
        .map(|cursor| {
            decode_cursor(cursor)
                .filter(|p| groups.iter().any(|(g, _)| *g == p.group))
                .ok_or_else(|| ApiError::bad_input("after", "not a cursor of this connection"))
        })
        .transpose()?;
    let mut rows = Vec::new();
    for (group, states) in groups {
        let need = limit + 1 - rows.len() as u64;
        if need == 0 {
            break;
        }
        let mut query =
            transfer::Entity::find().filter(transfer::Column::State.is_in(states.clone()));
        match after {
            Some(p) if p.group > group => continue,
            Some(p) if p.group == group => {
                query = query.filter(match group {
                    Group::Finished => Condition::all().add(transfer::Column::Id.lt(p.id)),
                    _ => Condition::any()
                        .add(transfer::Column::Priority.gt(p.priority))
                        .add(
                            Condition::all()
                                .add(transfer::Column::Priority.eq(p.priority))
                                .add(transfer::Column::Id.gt(p.id)),
                        ),
                });
            }
            _ => {}
        }
        query = match group {
            Group::Finished => query.order_by_desc(transfer::Column::Id),
            _ => query
                .order_by_asc(transfer::Column::Priority)
                .order_by_asc(transfer::Column::Id),
        };
        rows.extend(query.limit(need).all(&app.db).await.map_err(db_error)?);
    }
    let has_next_page = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok((rows, has_next_page))
}

/// Counts and bytes left per state, the limiter's rate and the schedule's limit now.
pub async fn summary(app: &AppState) -> ApiResult<TransferSummary> {
    let per_state: Vec<(String, i64, i64)> = transfer::Entity::find()
        .select_only()
        .column(transfer::Column::State)
        .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "transfers")
        .column_as(
            Expr::cust(
                r#"CAST(COALESCE(SUM(CASE WHEN "transfers"."size" > "transfers"."bytes_done" THEN "transfers"."size" - "transfers"."bytes_done" ELSE 0 END), 0) AS BIGINT)"#,
            ),
            "bytes_left",
        )
        .group_by(transfer::Column::State)
        .into_tuple()
        .all(&app.db)
        .await
        .map_err(db_error)?;
    let of = |wanted: enums::TransferState| {
        per_state
            .iter()
            .find(|(state, _, _)| state.parse::<enums::TransferState>() == Ok(wanted))
            .map_or((0, 0), |(_, count, bytes)| (*count, *bytes))
    };
    let count = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    let (queued, queued_bytes) = of(enums::TransferState::Queued);
    let (uploading, uploading_bytes) = of(enums::TransferState::Uploading);
    let rate = app.upload_limiter.current_rate();
    let limit = app.transfer_policy.limit_now();
    Ok(TransferSummary {
        queued_count: count(queued),
        queued_bytes: Long(queued_bytes),
        uploading_count: count(uploading),
        uploading_bytes: Long(uploading_bytes),
        done_count: count(of(enums::TransferState::Done).0),
        failed_count: count(of(enums::TransferState::Failed).0),
        rate_bytes_per_second: rate,
        limit_bytes_per_second: limit.map(|l| Long(i64::try_from(l).unwrap_or(i64::MAX))),
        eta_seconds: eta_seconds(queued_bytes + uploading_bytes, rate, limit),
    })
}

/// Seconds to upload `left` bytes: at the measured rate (never above the limit), else at the
/// limit; 0 when nothing is left; `None` when nothing moves and there is no limit.
pub fn eta_seconds(left: i64, rate: f64, limit: Option<u64>) -> Option<f64> {
    if left <= 0 {
        return Some(0.0);
    }
    let limit = limit.map(|l| l as f64);
    let speed = if rate >= 1.0 {
        limit.map_or(rate, |l| rate.min(l))
    } else {
        limit?
    };
    Some(left as f64 / speed)
}

#[derive(Debug, Default)]
pub struct TransferQuery;

#[Object]
impl TransferQuery {
    /// The write-back queue: UPLOADING, then QUEUED in upload order (priority, then oldest),
    /// then DONE, FAILED and SUPERSEDED newest first; `state` keeps one of them.
    async fn transfers(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "state")] state_arg: Option<TransferState>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<TransferConnection> {
        let app = state(ctx);
        let wanted = state_arg.map(enums::TransferState::from);
        let limit = page_limit(first).gql()?;
        let (rows, has_next_page) = transfers_page(app, wanted, after.as_deref(), limit)
            .await
            .gql()?;
        let states: Vec<_> = groups(wanted).into_iter().flat_map(|(_, s)| s).collect();
        let total = transfer::Entity::find()
            .filter(transfer::Column::State.is_in(states))
            .count(&app.db)
            .await
            .map_err(db_error)
            .gql()?;
        let end_cursor = rows.last().map(encode_cursor);
        Ok(TransferConnection {
            total_count: i32::try_from(total).unwrap_or(i32::MAX),
            edges: rows
                .into_iter()
                .map(|row| TransferEdge {
                    cursor: encode_cursor(&row),
                    node: Transfer(row),
                })
                .collect(),
            page_info: PageInfo {
                has_next_page,
                end_cursor,
            },
        })
    }

    /// The transfer policy in force and the limit it gives now.
    async fn transfer_policy(&self, ctx: &Context<'_>) -> TransferPolicyView {
        policy_view(state(ctx))
    }
}

#[derive(Debug, Default)]
pub struct TransferMutation;

#[Object]
impl TransferMutation {
    /// ADMIN: replaces the schedule and priorities at once, without a restart; every upload
    /// follows the new limit within a second, and queued transfers are re-prioritized. Not
    /// persisted: a restart goes back to `[transfer]` of the config.
    async fn set_transfer_policy(
        &self,
        ctx: &Context<'_>,
        input: TransferPolicyInput,
    ) -> GqlResult<TransferPolicyView> {
        let me = principal(ctx);
        me.require(Role::Admin).gql()?;
        let app = state(ctx);
        let policy = TransferPolicy::parse(&input.upload_schedule, &input.priorities)
            .map_err(policy_error)
            .gql()?;
        tracing::info!(by = %me.name, %policy, "transfer policy replaced");
        app.transfer_policy.set(policy);
        // The new policy is in force either way; a queue that could not be re-prioritized
        // keeps its order until the next change.
        if let Err(err) = app.write_back.reprioritize().await {
            tracing::warn!(error = %err, "cannot re-prioritize the upload queue");
        }
        Ok(policy_view(app))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_other_lists() {
        let row = transfer::Model {
            id: 42,
            op: enums::TransferOp::Put,
            bucket: "fleet".into(),
            key: "a.mcap".into(),
            size: 10,
            etag: None,
            staging_path: None,
            state: enums::TransferState::Queued,
            priority: -3,
            bytes_done: 0,
            attempts: 0,
            enqueued_at: Utc::now(),
            started_at: None,
            finished_at: None,
            error: None,
        };
        let cursor = encode_cursor(&row);
        assert_eq!(
            decode_cursor(&cursor),
            Some(Position {
                group: Group::Queued,
                priority: -3,
                id: 42
            })
        );
        let other = milepost_schema::ids::encode_cursor("member", 42);
        for bad in [other.as_str(), "", "!!", "dHJhbnNmZXI6OToxOjI"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn eta_uses_the_rate_then_the_limit() {
        assert_eq!(eta_seconds(0, 0.0, None), Some(0.0));
        assert_eq!(eta_seconds(100, 0.0, None), None);
        assert_eq!(eta_seconds(100, 0.0, Some(10)), Some(10.0));
        assert_eq!(eta_seconds(100, 50.0, None), Some(2.0));
        assert_eq!(
            eta_seconds(100, 50.0, Some(10)),
            Some(10.0),
            "never above the limit"
        );
    }
}
