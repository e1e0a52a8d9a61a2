use async_graphql::{Context, Object, ID};

use super::types::{Drive, PrincipalView, Run, Scenario};
use super::{principal, state};
use crate::catalog;

use async_graphql::{Result as GqlResult, ResultExt};

#[derive(Debug, Default)]
pub struct Query;

#[Object]
impl Query {
    async fn drive(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Drive>> {
        Ok(catalog::get_drive(&state(ctx).db, &id)
            .await
            .extend()?
            .map(Drive))
    }

    async fn scenario(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Scenario>> {
        Ok(catalog::get_scenario(&state(ctx).db, &id)
            .await
            .extend()?
            .map(Scenario))
    }

    async fn run(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Run>> {
        Ok(catalog::get_run(&state(ctx).db, &id)
            .await
            .extend()?
            .map(Run))
    }

    /// Who this request is made as.
    async fn me(&self, ctx: &Context<'_>) -> PrincipalView {
        PrincipalView::from(principal(ctx))
    }
}
