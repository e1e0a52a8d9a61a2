//! The query mix of the search benchmarks (`bench_search`, `bench_web`): typical engineer
//! queries, text with two field filters, and the empty query (everything, with facets).

/// (short name, query). Every search also returns facet counts.
pub const QUERIES: &[(&str, &str)] = &[
    (
        "text + city + weather",
        "cut-in city:guangzhou weather:rain",
    ),
    (
        "text + tag + software*",
        "pedestrian tag:night software:av-3.14*",
    ),
    (
        "kind + vehicle + after",
        "kind:drive vehicle:gz-004 after:2026-06-01",
    ),
    (
        "3 words + city - weather",
        "unprotected left turn city:munich -weather:snow",
    ),
    (
        "phrase + weather + tag",
        "\"lane merge\" weather:fog tag:highway",
    ),
    ("empty (all, facets)", ""),
    ("topic + city", "topic:/lidar/points city:shanghai"),
    (
        "prefix + city + weather",
        "emerg* city:beijing weather:night",
    ),
    (
        "kind + label + tag",
        "kind:scenario label:jaywalker tag:occluded",
    ),
];
