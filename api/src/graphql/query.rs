use async_graphql::{Context, Object, ID};

use super::search::{self, EntityKind, SearchResult};
use super::types::{Drive, DriveRelated, PrincipalView, Run, Scenario};
use super::{principal, state};
use milepost_indexer::catalog;

use crate::error::GqlResultExt;
use async_graphql::Result as GqlResult;

#[derive(Debug, Default)]
pub struct Query;

#[Object]
impl Query {
    async fn drive(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Drive>> {
        // The drive page asks for events and scenarios with the drive: read them in the same
        // round trip when the selection has them.
        let selection = ctx.look_ahead();
        let page = catalog::get_drive_page(
            &state(ctx).db,
            &id,
            selection.field("events").exists(),
            selection.field("scenarios").exists(),
        )
        .await
        .gql()?;
        Ok(page.map(|page| {
            Drive(
                page.drive,
                DriveRelated {
                    events: page.events,
                    scenarios: page.scenarios,
                },
            )
        }))
    }

    async fn scenario(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Scenario>> {
        Ok(catalog::get_scenario(&state(ctx).db, &id)
            .await
            .gql()?
            .map(Scenario))
    }

    async fn run(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Run>> {
        Ok(catalog::get_run(&state(ctx).db, &id).await.gql()?.map(Run))
    }

    /// Free text plus field:value terms, e.g.
    /// `cut-in city:guangzhou weather:rain tag:night software:av-3.14* after:2026-10-01`.
    async fn search(
        &self,
        ctx: &Context<'_>,
        query: String,
        kinds: Option<Vec<EntityKind>>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<SearchResult> {
        search::run_search(ctx, query, kinds, first, after)
            .await
            .gql()
    }

    /// How far this node's running (or last) catalog sync got: phase, counts, rate, errors.
    async fn sync_status(&self, ctx: &Context<'_>) -> search::SyncStatus {
        state(ctx).sync_progress.status().into()
    }

    /// Who this request is made as.
    async fn me(&self, ctx: &Context<'_>) -> PrincipalView {
        PrincipalView::from(principal(ctx))
    }
}
