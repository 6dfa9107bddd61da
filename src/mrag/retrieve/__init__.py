"""Retrieval, read top-down along one search:

    search.py       the front door (`Index.search` runs it): embed the queries, pick a ranker,
                    vote, fetch the hits' rows
    strategies.py   strategies and planning: which spaces vote with which weights, and how a
                    segmented query's lists merge (`mrag.vote` holds the pure vote functions)
    exact.py        the exact ranker: every space's nearest rows in memory
    lowprec.py      the exact ranker's bf16 scan of the heads, re-scored in fp32
    ann.py          the approximate ranker: LanceDB's ANN index per space
    fulltext.py     the full-text space: LanceDB's BM25 index on the chunk text, kept up to date by
                    every write, and a ranker that answers the `bm25` voter beside either ranker
    bm25.py         the full-text space in memory: the same BM25 over the loaded matrix's rows
    filtered.py     a search's SQL filter (`where`): only the rows it keeps are ranked, in every space
    filter_sql.py   the filter's text checked first: what LanceDB can take safely, what the server takes
    types.py        the data passed along: QueryVectors, Voter, Scales, Ranker, Result, Hit

Query segmentation is text code (`mrag.chunk`); the strategy names and their parsing are
settings (`mrag.settings`).
"""
