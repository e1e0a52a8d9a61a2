use async_graphql::{Context, Object};
use milepost_schema::enums::{RecordSource, Role};

use super::inputs::{RegisterDriveInput, RegisterRunInput, TagScenarioInput};
use super::search::{self, SyncReport};
use super::types::{Drive, Run, Scenario};
use super::{principal, state};

use crate::error::GqlResultExt;
use async_graphql::Result as GqlResult;

#[derive(Debug, Default)]
pub struct Mutation;

#[Object]
impl Mutation {
    /// PIPELINE or ADMIN; idempotent on id.
    async fn register_drive(
        &self,
        ctx: &Context<'_>,
        input: RegisterDriveInput,
    ) -> GqlResult<Drive> {
        principal(ctx).require(Role::Pipeline).gql()?;
        let app = state(ctx);
        let drive = app
            .catalog
            .register_drive(input.into(), RecordSource::Api)
            .await
            .gql()?;
        crate::records::write_drive(app, &drive.id).await.gql()?;
        Ok(Drive::new(drive))
    }

    /// PIPELINE or ADMIN; idempotent on id.
    async fn register_run(&self, ctx: &Context<'_>, input: RegisterRunInput) -> GqlResult<Run> {
        principal(ctx).require(Role::Pipeline).gql()?;
        let app = state(ctx);
        let run = app
            .catalog
            .register_run(input.into(), RecordSource::Api)
            .await
            .gql()?;
        crate::records::write_run(app, &run.id).await.gql()?;
        Ok(Run(run))
    }

    /// ADMIN: rescan the catalog bucket now; with `prefix` (inside the drives or runs
    /// prefix), only the keys under it.
    async fn sync_catalog(
        &self,
        ctx: &Context<'_>,
        prefix: Option<String>,
    ) -> GqlResult<SyncReport> {
        principal(ctx).require(Role::Admin).gql()?;
        search::run_sync(ctx, prefix).await.gql()
    }

    /// ENGINEER and up; the same drive, span and label again updates the scenario.
    async fn tag_scenario(
        &self,
        ctx: &Context<'_>,
        input: TagScenarioInput,
    ) -> GqlResult<Scenario> {
        principal(ctx).require(Role::Engineer).gql()?;
        let app = state(ctx);
        let scenario = app.catalog.tag_scenario(input.into()).await.gql()?;
        crate::records::write_drive(app, &scenario.drive_id)
            .await
            .gql()?;
        Ok(Scenario(scenario))
    }
}
