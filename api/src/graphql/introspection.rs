//! Introspection for standard tooling, with bounds of its own.
//!
//! The introspection query every schema-driven client sends (GraphiQL's documentation
//! explorer, graphql-core's `get_introspection_query()`, `gql`, Apollo, graphql-codegen)
//! nests `ofType` seven to nine times under `__schema.types.fields.type`: deeper than the
//! depth limit that stops abusive queries ([`ServerConfig::max_query_depth`], 12 by
//! default). So an operation that selects only introspection (`__schema`, `__type`,
//! `__typename` at its root) is counted separately:
//!
//! - its depth is bounded by [`MAX_INTROSPECTION_DEPTH`] instead: `ofType` chains are cheap
//!   (each level is one object or null) but not endless;
//! - the list fields that multiply the schema (`fields`, `inputFields`, `interfaces`,
//!   `possibleTypes`) may nest at most [`MAX_TYPE_LIST_NESTING`] levels, the bound of
//!   graphql-js's `MaxIntrospectionDepthRule`: the standard query nests them once, while
//!   `fields { type { fields { type { fields ...` would multiply the schema by itself;
//! - the complexity limit is the same as for every query, so aliases cannot repeat a big
//!   selection many times.
//!
//! Everything else, including a query that mixes data and introspection, meets the ordinary
//! limits.
//!
//! [`ServerConfig::max_query_depth`]: crate::config::ServerConfig::max_query_depth

use std::collections::HashSet;

use async_graphql::parser::parse_query;
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};

/// Deepest an introspection-only operation may nest (GraphiQL's query reaches 14).
pub const MAX_INTROSPECTION_DEPTH: usize = 32;

/// How many of `fields`, `inputFields`, `interfaces` and `possibleTypes` may nest in one
/// path of an introspection-only operation.
pub const MAX_TYPE_LIST_NESTING: usize = 2;

const TYPE_LISTS: [&str; 4] = ["fields", "inputFields", "interfaces", "possibleTypes"];
const INTROSPECTION_ROOTS: [&str; 3] = ["__schema", "__type", "__typename"];

/// Which limits a request's query meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limits {
    /// The ordinary depth and complexity limits.
    Ordinary,
    /// Only introspection: the bounds of this module.
    Introspection,
}

/// Which limits `query` meets, or why it is refused: an introspection-only document that
/// nests the schema's type lists too deeply. A document that does not parse meets the
/// ordinary limits (and the schema reports its syntax error).
pub fn limits_for(query: &str) -> Result<Limits, String> {
    if !mentions_introspection(query) {
        return Ok(Limits::Ordinary);
    }
    let Ok(document) = parse_query(query) else {
        return Ok(Limits::Ordinary);
    };
    if !introspection_only(&document) {
        return Ok(Limits::Ordinary);
    }
    let mut walk = Walk {
        document: &document,
        on_path: HashSet::new(),
        deepest: 0,
    };
    for (_, operation) in document.operations.iter() {
        walk.selections(&operation.node.selection_set.node, 0, 0);
    }
    if walk.deepest > MAX_TYPE_LIST_NESTING {
        return Err(format!(
            "introspection nests {} of `fields`, `inputFields`, `interfaces` and \
             `possibleTypes` inside each other; at most {MAX_TYPE_LIST_NESTING} may nest \
             (the standard introspection query nests one)",
            walk.deepest
        ));
    }
    Ok(Limits::Introspection)
}

/// A cheap test before parsing: `__schema` or `__type` (not `__typename`, which clients add
/// to ordinary queries everywhere) appears in the text.
fn mentions_introspection(query: &str) -> bool {
    query.contains("__schema")
        || query
            .match_indices("__type")
            .any(|(at, _)| !query[at + "__type".len()..].starts_with("name"))
}

/// Every operation is a query whose root selects only introspection fields (through
/// fragments too).
fn introspection_only(document: &ExecutableDocument) -> bool {
    document.operations.iter().all(|(_, operation)| {
        operation.node.ty == OperationType::Query
            && root_fields_are_introspection(document, &operation.node.selection_set.node, 0)
    })
}

fn root_fields_are_introspection(
    document: &ExecutableDocument,
    set: &SelectionSet,
    fragments_deep: usize,
) -> bool {
    // Fragments spreading each other in a cycle are refused by validation; here the
    // nesting is only bounded.
    if fragments_deep > MAX_INTROSPECTION_DEPTH {
        return false;
    }
    set.items.iter().all(|item| match &item.node {
        Selection::Field(field) => INTROSPECTION_ROOTS.contains(&field.node.name.node.as_str()),
        Selection::InlineFragment(inline) => root_fields_are_introspection(
            document,
            &inline.node.selection_set.node,
            fragments_deep + 1,
        ),
        Selection::FragmentSpread(spread) => document
            .fragments
            .get(&spread.node.fragment_name.node)
            .is_some_and(|fragment| {
                root_fields_are_introspection(
                    document,
                    &fragment.node.selection_set.node,
                    fragments_deep + 1,
                )
            }),
    })
}

/// The deepest nesting of type lists in a document, fragments followed.
struct Walk<'a> {
    document: &'a ExecutableDocument,
    /// Fragments being expanded on the current path (a cycle is not followed again).
    on_path: HashSet<&'a str>,
    deepest: usize,
}

impl<'a> Walk<'a> {
    fn selections(&mut self, set: &'a SelectionSet, lists: usize, depth: usize) {
        // Past the depth bound the schema refuses the query anyway; stop walking (this also
        // bounds the recursion).
        if depth > MAX_INTROSPECTION_DEPTH || self.deepest > MAX_TYPE_LIST_NESTING {
            return;
        }
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let lists = lists + usize::from(TYPE_LISTS.contains(&field.name.node.as_str()));
                    self.deepest = self.deepest.max(lists);
                    self.selections(&field.selection_set.node, lists, depth + 1);
                }
                Selection::InlineFragment(inline) => {
                    self.selections(&inline.node.selection_set.node, lists, depth + 1);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.document.fragments.get(name) else {
                        continue;
                    };
                    if !self.on_path.insert(name) {
                        continue;
                    }
                    self.selections(&fragment.node.selection_set.node, lists, depth + 1);
                    self.on_path.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_queries_meet_the_ordinary_limits() {
        for query in [
            "{ drives { edges { node { id } } } }",
            "{ __typename drives { edges { node { __typename id } } } }",
            "{ __schema { queryType { name } } drives { totalCount } }",
            "mutation { __typename }",
            "{ __schema { not closed",
        ] {
            assert_eq!(limits_for(query), Ok(Limits::Ordinary), "{query}");
        }
    }

    #[test]
    fn introspection_through_fragments_is_counted_separately() {
        let query = "query Q { ...Root } fragment Root on Query { __schema { types { ...T } } }
                     fragment T on __Type { name fields { name type { name ofType { name } } } }";
        assert_eq!(limits_for(query), Ok(Limits::Introspection));
        assert_eq!(
            limits_for("{ __type(name: \"Drive\") { fields { type { fields { name } } } } }"),
            Ok(Limits::Introspection)
        );
    }

    #[test]
    fn type_lists_nested_three_times_are_refused() {
        let query =
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }";
        let err = limits_for(query).expect_err("refused");
        assert!(err.contains("nests 3"), "{err}");
        // Hidden in fragments, and through a cycle (which validation refuses later).
        let query = "{ __schema { types { ...A } } } fragment A on __Type { interfaces { ...B } }
                     fragment B on __Type { possibleTypes { ...C } } fragment C on __Type { inputFields { name } ...A }";
        let err = limits_for(query).expect_err("refused");
        assert!(err.contains("nests 3"), "{err}");
    }
}
