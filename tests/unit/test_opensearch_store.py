"""Unit tests of index.opensearch_store without a cluster: mapping, scores, bulk outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from interest_stream.core.records import UserRecord
from interest_stream.index.opensearch_mapping import HnswParams, index_body, ip_from_score, outcome
from interest_stream.index.opensearch_store import Life, Upsert


def test_scores_turn_back_into_inner_products() -> None:
    for ip in (-3.0, -0.5, 0.0, 0.25, 7.0):
        score = ip + 1 if ip >= 0 else 1 / (1 - ip)
        assert ip_from_score(score) == pytest.approx(ip)


def test_index_body_has_three_inner_product_vectors() -> None:
    body = index_body(16, engine="lucene", shards=2)
    props = body["mappings"]["properties"]
    for name in ("short", "long", "blend"):
        assert props[name]["type"] == "knn_vector" and props[name]["dimension"] == 16
        assert props[name]["method"]["space_type"] == "innerproduct"
        assert props[name]["method"]["engine"] == "lucene"
    assert body["settings"]["index"]["knn"] is True
    assert body["settings"]["index"]["number_of_shards"] == 2
    assert body["mappings"]["dynamic"] == "strict"


def test_bulk_items_map_to_outcomes() -> None:
    assert outcome("a", {"index": {"status": 201}}).result == "applied"
    assert outcome("a", {"index": {"status": 409}}).result == "stale"
    out = outcome(
        "a",
        {
            "index": {
                "status": 429,
                "error": {"type": "es_rejected_execution", "reason": "queue full"},
            }
        },
    )
    assert out.result == "failed" and "429 es_rejected_execution" in out.reason


def test_external_version_adds_the_life() -> None:
    rec = Upsert(
        record=UserRecord("a", 3, np.zeros(2, np.float32), np.zeros(2, np.float32)),
        partition=0,
        offset=5,
    )
    assert rec.external_version == 3
    assert Upsert(rec.record, 0, 9, Life(40, 8)).external_version == 43


def test_hnsw_params_parse_into_the_mapping() -> None:
    hnsw = HnswParams.parse("m=16, ef_construction=100,encoder=sq")
    assert (hnsw.m, hnsw.ef_construction, hnsw.encoder) == (16, 100, "sq")
    assert hnsw.ef_search == HnswParams().ef_search  # unset: the default
    method = index_body(8, hnsw=hnsw)["mappings"]["properties"]["blend"]["method"]
    assert method["parameters"] == {"m": 16, "ef_construction": 100, "encoder": {"name": "sq"}}
    plain = index_body(8)["mappings"]["properties"]["short"]["method"]["parameters"]
    assert "encoder" not in plain and plain["m"] == HnswParams().m
    for bad in ("m=1", "efs=3", "encoder=pq"):
        with pytest.raises(ValueError):
            HnswParams.parse(bad)
