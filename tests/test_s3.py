"""An index on object storage: s3:// through LanceDB against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest
from conftest import FakeEmbedder

from mrag.index import Index
from mrag.store import Store, StoreError

moto_server = pytest.importorskip("moto.server", reason="needs moto[server]: pip install 'moto[server]'")
boto3 = pytest.importorskip("boto3")

BUCKET = "mrag-test"
KEY, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"
DOCS = [
    {"id": "rome", "text": "Roman aqueducts carried water downhill into the city by gravity."},
    {"id": "bees", "text": "Honeybees fan their wings to cool the hive on hot days."},
    {"id": "chess", "text": "Deep Blue beat Kasparov at chess in 1997."},
    {"id": "tides", "text": "The Moon pulls the oceans and raises the tides twice a day."},
]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port) with one empty bucket, for this module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def storage_options(s3_endpoint: str) -> dict[str, str]:
    return {
        "aws_endpoint": s3_endpoint,
        "aws_access_key_id": KEY,
        "aws_secret_access_key": SECRET,
        "aws_region": REGION,
        "allow_http": "true",
    }


@pytest.fixture
def s3_uri() -> str:
    """A fresh prefix per test, so tests never see each other's tables."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/db"


def test_add_search_delete_reopen_on_s3(s3_uri, storage_options, fake, tmp_path):
    assert not Store.exists(s3_uri, storage_options)
    index = Index.open(s3_uri, embedder=fake, storage_options=storage_options)
    assert index.add(DOCS).chunks == 4
    hits = index.search("Honeybees fan their wings to cool the hive", k=2)
    assert hits[0].id == "bees#0"
    assert index.delete(["chess"]) == 1

    reopened = Index.open(s3_uri, embedder=FakeEmbedder(), storage_options=storage_options, create=False)
    assert reopened.store.count() == 3
    assert sorted(reopened.store.rows(columns=["doc_id"])["doc_id"].to_pylist()) == ["bees", "rome", "tides"]
    assert [h.id for h in reopened.search("Deep Blue beat Kasparov at chess", k=3, strategy="standard")].count(
        "chess#0"
    ) == 0
    assert reopened.search("The Moon pulls the oceans", k=1)[0].id == "tides#0"

    # the same operations on a local folder give the same head scales
    local = Index.open(tmp_path / "local", embedder=FakeEmbedder())
    local.add(DOCS)
    local.delete(["chess"])
    np.testing.assert_allclose(
        [h["scale"] for h in reopened.head_scales()], [h["scale"] for h in local.head_scales()], rtol=1e-9
    )


def test_upsert_on_s3_replaces_changed_documents(s3_uri, storage_options, fake):
    index = Index.open(s3_uri, embedder=fake, storage_options=storage_options)
    index.add(DOCS)
    report = index.upsert([{"id": "rome", "text": "Gladiators fought in the Colosseum before crowds."}])
    assert report.updated == ["rome"]
    reopened = Index.open(s3_uri, embedder=FakeEmbedder(), storage_options=storage_options, create=False)
    texts = reopened.store.rows("doc_id = 'rome'", ["text"])["text"].to_pylist()
    assert texts == ["Gladiators fought in the Colosseum before crowds."]
    assert reopened.store.count() == 4


def test_failed_write_on_s3_leaves_the_committed_index(s3_uri, storage_options, fake, monkeypatch):
    index = Index.open(s3_uri, embedder=fake, storage_options=storage_options)
    index.add(DOCS[:2])
    calls = {"n": 0}
    real = fake.embed_batch

    def dies_on_second_batch(texts: list[str]):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker lost")
        return real(texts)

    monkeypatch.setattr(fake, "embed_batch", dies_on_second_batch)
    monkeypatch.setattr("mrag.index.WRITE_BATCH", 1)  # one chunk per write step: the first step lands
    with pytest.raises(RuntimeError, match="worker lost"):
        index.add(DOCS[2:])
    reopened = Index.open(s3_uri, embedder=FakeEmbedder(), storage_options=storage_options, create=False)
    assert sorted(reopened.store.rows(columns=["doc_id"])["doc_id"].to_pylist()) == ["bees", "rome"]
    assert reopened.store.stats.count == 2


def test_aws_environment_variables_work_without_storage_options(s3_uri, storage_options, fake, monkeypatch):
    for key, value in storage_options.items():
        monkeypatch.setenv(key.upper() if key.startswith("aws_") else f"AWS_{key.upper()}", value)
    index = Index.open(s3_uri, embedder=fake)
    index.add(DOCS[:1])
    assert Store.exists(s3_uri)
    assert Index.open(s3_uri, embedder=FakeEmbedder(), create=False).store.count() == 1


def test_missing_index_on_s3_is_a_clear_error(s3_uri, storage_options):
    with pytest.raises(StoreError, match="no mrag index at s3://"):
        Index.open(s3_uri, storage_options=storage_options, create=False)
    with pytest.raises(StoreError, match="no mrag index"):
        Store.open(s3_uri, storage_options)


def test_local_paths_still_need_an_existing_folder(tmp_path):
    missing = tmp_path / "nothing-here"
    assert not Store.exists(str(missing))
    assert not missing.exists()  # checking did not create it
