use async_graphql::{Context, Object};
use milepost_schema::enums::{RecordSource, Role};

use super::inputs::{RegisterDriveInput, RegisterRunInput, TagScenarioInput};
use super::types::{Drive, Run, Scenario};
use super::{principal, state};
use crate::catalog;

use async_graphql::{Result as GqlResult, ResultExt};

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
        principal(ctx).require(Role::Pipeline).extend()?;
        let app = state(ctx);
        let drive = catalog::register_drive(&app.db, &app.layout, input.into(), RecordSource::Api)
            .await
            .extend()?;
        Ok(Drive(drive))
    }

    /// PIPELINE or ADMIN; idempotent on id.
    async fn register_run(&self, ctx: &Context<'_>, input: RegisterRunInput) -> GqlResult<Run> {
        principal(ctx).require(Role::Pipeline).extend()?;
        let app = state(ctx);
        let run = catalog::register_run(&app.db, &app.layout, input.into(), RecordSource::Api)
            .await
            .extend()?;
        Ok(Run(run))
    }

    /// ENGINEER and up; the same drive, span and label again updates the scenario.
    async fn tag_scenario(
        &self,
        ctx: &Context<'_>,
        input: TagScenarioInput,
    ) -> GqlResult<Scenario> {
        principal(ctx).require(Role::Engineer).extend()?;
        let scenario = catalog::tag_scenario(&state(ctx).db, input.into())
            .await
            .extend()?;
        Ok(Scenario(scenario))
    }
}
