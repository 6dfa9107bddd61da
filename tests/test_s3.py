"""An index on object storage: s3:// through LanceDB against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeEmbedder

from mrag.errors import StoreError
from mrag.index import Index
from mrag.locking import LOCK_FILE, LockTimeout, lock_key, s3_client
from mrag.store import Store

moto_server = pytest.importorskip("moto.server", reason="needs moto's S3 server: pip install 'moto[s3]' flask")
boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402
from procs import check_index  # noqa: E402

PROCS = str(Path(__file__).with_name("procs.py"))

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
    monkeypatch.setattr("mrag.writing.WRITE_BATCH", 1)  # one chunk per write step: the first step lands
    with pytest.raises(RuntimeError, match="worker lost"):
        index.add(DOCS[2:])
    reopened = Index.open(s3_uri, embedder=FakeEmbedder(), storage_options=storage_options, create=False)
    assert sorted(reopened.store.rows(columns=["doc_id"])["doc_id"].to_pylist()) == ["bees", "rome"]
    assert reopened.store.sums.heads.count == 2


def test_aws_environment_variables_work_without_storage_options(s3_uri, storage_options, fake, monkeypatch):
    for key, value in storage_options.items():
        monkeypatch.setenv(key.upper() if key.startswith("aws_") else f"AWS_{key.upper()}", value)
    index = Index.open(s3_uri, embedder=fake)
    index.add(DOCS[:1])
    assert Store.exists(s3_uri)
    assert Index.open(s3_uri, embedder=FakeEmbedder(), create=False).store.count() == 1


def run_procs(storage_options: dict[str, str], *commands: list[str]) -> None:
    """tests/procs.py roles, each in a process of its own, all at once, against the moto server."""
    env = os.environ | {"PROCS_STORAGE_OPTIONS": json.dumps(storage_options)}
    procs = [subprocess.Popen([sys.executable, PROCS, *c], env=env, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]


def test_writers_in_several_processes_on_s3_take_turns(s3_uri, storage_options, fake, tmp_path, monkeypatch):
    """Two processes write one s3:// index at once: the lease lock serialises their commits."""
    Index.open(s3_uri, embedder=fake, storage_options=storage_options)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    run_procs(storage_options, *(["writer", s3_uri, str(log), log.stem, "8", str(i)] for i, log in enumerate(logs)))
    monkeypatch.setenv("PROCS_STORAGE_OPTIONS", json.dumps(storage_options))
    counts = check_index(s3_uri, logs)
    assert counts["acknowledged"] >= 10 and counts["sums_drift"] < 1e-6


def test_a_dead_writers_lease_is_taken_over_and_a_live_one_waited_for(s3_uri, storage_options, fake, monkeypatch):
    import mrag.locking

    index = Index.open(s3_uri, embedder=fake, storage_options=storage_options)
    client = s3_client(storage_options)
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    key = f"{prefix}/{LOCK_FILE}"
    dead = {"pid": 1, "host": "gone", "command": "mrag index", "since": "earlier", "expires": time.time() - 1}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(dead).encode())
    monkeypatch.setattr(mrag.locking, "LEASE", 2.0)
    time.sleep(3.1)  # not renewed for a lease's time by the store's clock (whole seconds)
    index.add(DOCS[:1])  # the expired lease is taken over
    with pytest.raises(ClientError):  # and released when the write is done
        client.head_object(Bucket=bucket, Key=key)

    live = dead | {"pid": 4242, "host": "busy", "expires": time.time() + 60}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(live).encode())
    monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "1")
    with pytest.raises(LockTimeout, match="pid 4242 on busy"):
        index.add(DOCS[1:2])
    client.delete_object(Bucket=bucket, Key=key)
    assert Index.open(s3_uri, embedder=FakeEmbedder(), storage_options=storage_options).store.count() == 1


def test_the_scheme_in_capitals_takes_the_same_lock(s3_uri, storage_options, fake, monkeypatch):
    """Lance opens `S3://` as `s3://`: a writer spelling it so waits for the same lease (it took none, and
    its commit erased another writer's acknowledged write)."""
    Index.open(s3_uri, embedder=fake, storage_options=storage_options).add(DOCS[:1])
    shouting = "S3://" + s3_uri.removeprefix("s3://")
    index = Index.open(shouting, embedder=FakeEmbedder(), storage_options=storage_options, create=False)
    assert index.store.uri == s3_uri
    client = s3_client(storage_options)
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    live = {"pid": 4242, "host": "busy", "command": "mrag index", "since": "now", "expires": time.time() + 60}
    client.put_object(Bucket=bucket, Key=f"{prefix}/{LOCK_FILE}", Body=json.dumps(live).encode())
    monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "1")
    with pytest.raises(LockTimeout, match="pid 4242 on busy"):
        index.add(DOCS[1:2])
    client.delete_object(Bucket=bucket, Key=f"{prefix}/{LOCK_FILE}")
    index.add(DOCS[1:2])
    assert Index.open(s3_uri, embedder=FakeEmbedder(), storage_options=storage_options).store.count() == 2


def test_a_lease_renewed_by_a_writer_whose_clock_runs_late_is_not_taken(s3_uri, storage_options, fake, monkeypatch):
    """A waiter whose clock ran two minutes ahead read the holder's `expires` as past and took a live lease:
    a lease's age is the store's (its Last-Modified against the Date of the answer)."""
    index = Index.open(s3_uri, embedder=fake, storage_options=storage_options)
    client = s3_client(storage_options)
    bucket, key = lock_key(s3_uri)
    late = {"pid": 4242, "host": "slow-clock", "command": "mrag index", "since": "now", "expires": time.time() - 120}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(late).encode())  # just renewed
    monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "1")
    with pytest.raises(LockTimeout, match="slow-clock"):
        index.add(DOCS[:1])
    client.delete_object(Bucket=bucket, Key=key)


def test_the_lease_of_every_spelling_of_an_index_is_one_object():
    assert lock_key("s3://b/a/db") == ("b", f"a/db/{LOCK_FILE}")
    for spelling in ("S3://b/a/db/", "s3://b/a/./db", "s3://b//a/db", "s3://b/./a//db/.", "s3://b/a/x/../db"):
        assert lock_key(spelling) == lock_key("s3://b/a/db"), spelling
    assert lock_key("s3://b") == ("b", LOCK_FILE)


class FlakyStore:
    """An S3 client whose PUTs fail `failures` times (no answer), then succeed."""

    def __init__(self, failures: int) -> None:
        self.failures, self.puts = failures, 0

    def put_object(self, **request: object) -> dict[str, str]:
        self.puts += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("no answer")
        return {"ETag": f"etag-{self.puts}"}

    def delete_object(self, **request: object) -> None:
        pass


class Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class AnswerLost(FlakyStore):
    """The first renewal is applied but its answer lost; the next, on the old ETag, is refused (412)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.body, self.etag = b"", "etag-0"

    def put_object(self, **request: object) -> dict[str, str]:
        self.puts += 1
        if request.get("IfMatch") not in (None, self.etag):
            raise Refused("PreconditionFailed")
        self.body, self.etag = request["Body"], f"etag-{self.puts}"  # type: ignore[assignment]
        if self.puts == 1:
            raise ConnectionError("the answer was lost")
        return {"ETag": self.etag}

    def get_object(self, **request: object) -> dict[str, object]:
        return {"Body": io.BytesIO(self.body), "ETag": self.etag}


class Hanging(FlakyStore):
    def put_object(self, **request: object) -> dict[str, str]:
        self.puts += 1
        time.sleep(30)  # a store that never answers
        return {"ETag": "late"}


def test_a_renewal_applied_whose_answer_was_lost_keeps_the_lease(monkeypatch):
    """The retry on the old ETag was refused and read as taken over: the lease object holds this holder's
    token, so its ETag is taken on."""
    import mrag.locking

    monkeypatch.setattr(mrag.locking, "LEASE", 1.2)
    client = AnswerLost()
    lease = mrag.locking.Lease(client, "b", "k", "etag-0", {"token": "mine"})
    time.sleep(1.0)
    assert not lease.lost and client.puts >= 3 and lease.etag == client.etag
    lease.release()


class SlowFirstPut:
    """A store that applies the lease's first PUT but whose answer never comes in time (a read timeout)."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.etag, self.puts = "", 0

    def put_object(self, **request: object) -> dict[str, str]:
        from botocore.exceptions import ClientError, ReadTimeoutError

        self.puts += 1
        taken = request.get("IfNoneMatch") == "*" and self.body is not None
        if taken or request.get("IfMatch", self.etag) != self.etag:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
        self.body, self.etag = request["Body"], f"etag-{self.puts}"  # type: ignore[assignment]
        if self.puts == 1:
            raise ReadTimeoutError(endpoint_url="http://store")
        return {"ETag": self.etag}

    def get_object(self, **request: object) -> dict[str, object]:
        return {"Body": io.BytesIO(self.body or b""), "ETag": self.etag}

    def delete_object(self, **request: object) -> None:
        self.body = None


def test_a_lease_put_applied_whose_answer_came_too_late_is_the_writer_s_own(monkeypatch):
    # the writer waited for its own lease, named its own pid in a LockTimeout, and left the lease behind
    import mrag.locking

    store = SlowFirstPut()
    monkeypatch.setattr(mrag.locking, "s3_client", lambda options: store)
    with mrag.locking.s3_lock("s3://b/db", timeout=5, storage_options={}) as lease:
        assert lease.etag == store.etag == "etag-2" and store.puts == 2  # adopted, renewed on its own ETag
    assert store.body is None  # released


def test_a_store_that_refuses_connections_is_told_at_once_not_as_another_writer(monkeypatch):
    # every botocore error was polled on: a wrong endpoint waited MRAG_LOCK_TIMEOUT for "another writer holds"
    from botocore.exceptions import EndpointConnectionError

    import mrag.locking

    class Down(SlowFirstPut):
        def put_object(self, **request: object) -> dict[str, str]:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(mrag.locking, "s3_client", lambda options: Down())
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError), mrag.locking.s3_lock("s3://b/db", timeout=30, storage_options={}):
        pass
    assert time.monotonic() - started < 5


def test_a_renewal_that_hangs_loses_the_lease_in_time(monkeypatch):
    """A PUT that never answers raised nothing, so the writer could commit after its lease had expired."""
    import mrag.locking

    monkeypatch.setattr(mrag.locking, "LEASE", 1.2)  # given up 1.0 s after the last renewal sent
    lease = mrag.locking.Lease(Hanging(0), "b", "k", "etag-0", {})
    assert not lease.lost
    time.sleep(1.3)
    assert lease.lost


@pytest.mark.parametrize("failures, lost", [(2, False), (1000, True)])
def test_a_renewal_without_answer_is_tried_again_while_the_lease_lives(monkeypatch, failures, lost):
    """A blip at a renewal lost a long write (the lease had 40 s left): renewals are tried again, and the
    lease is given up only when most of it has passed without one."""
    import mrag.locking

    monkeypatch.setattr(mrag.locking, "LEASE", 1.2)  # renewed every 0.4 s, tried again every 0.1 s
    client = FlakyStore(failures)
    lease = mrag.locking.Lease(client, "b", "k", "etag-0", {})
    time.sleep(1.6)
    assert lease.lost is lost and client.puts >= 3
    lease.release()


def test_a_held_lease_is_renewed_and_a_taken_one_is_lost(s3_uri, storage_options, monkeypatch):
    import mrag.locking

    monkeypatch.setattr(mrag.locking, "LEASE", 0.9)  # renewed every 0.3 s
    client = s3_client(storage_options)
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    key = f"{prefix}/{LOCK_FILE}"
    with mrag.locking.write_lock(s3_uri, storage_options=storage_options) as lease:
        time.sleep(2)  # longer than the lease: alive only through renewals
        note = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert note["expires"] > time.time() and note["pid"] == os.getpid() and not lease.lost
        client.put_object(Bucket=bucket, Key=key, Body=b"{}")  # someone else's now
        time.sleep(0.7)
        assert lease.lost  # the next renewal found another ETag
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"{}"  # not deleted: not ours


def test_a_write_that_lost_its_lease_commits_nothing(s3_uri, storage_options, fake, monkeypatch):
    import mrag.locking

    index = Index.open(s3_uri, embedder=fake, storage_options=storage_options)
    index.add(DOCS[:1])
    monkeypatch.setattr(mrag.locking, "LEASE", 0.9)
    monkeypatch.setattr("mrag.writing.STAGE_BYTES", 1)  # the lock is taken after the first batch
    monkeypatch.setattr("mrag.writing.WRITE_BATCH", 1)
    client = s3_client(storage_options)
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    real, calls = fake.embed_batch, []

    def stalls_under_the_lock(texts: list[str]):
        calls.append(texts)
        if len(calls) == 2:  # the second batch is embedded under the lock: it is taken over meanwhile
            client.put_object(Bucket=bucket, Key=f"{prefix}/{LOCK_FILE}", Body=b"{}")
            time.sleep(0.7)
        return real(texts)

    monkeypatch.setattr(fake, "embed_batch", stalls_under_the_lock)
    with pytest.raises(StoreError, match="expired during the write"):  # its next rows are refused: not committed
        index.add(DOCS[1:3])
    reopened = Index.open(s3_uri, embedder=FakeEmbedder(), storage_options=storage_options, create=False)
    assert reopened.store.count() == 1 and reopened.store.committed_scales()["heads"].shape == (4,)


@pytest.mark.parametrize("endpoint, region", [("endpoint_url", "aws_default_region"), ("aws_endpoint_url", "region")])
def test_the_lock_reads_every_spelling_of_the_store_s_options_that_lance_reads(s3_uri, storage_options, fake,
                                                                                endpoint, region):
    # LanceDB wrote to the endpoint given as endpoint_url, and the lock went to AWS's own (a botocore traceback)
    options = {endpoint: storage_options["aws_endpoint"], region: REGION, "access_key_id": KEY,
               "secret_access_key": SECRET, "allow_http": "true"}
    Index.open(s3_uri, embedder=fake, storage_options=options).add(DOCS[:1])
    assert Index.open(s3_uri, embedder=fake, storage_options=storage_options, create=False).store.count() == 1


def test_a_renewal_gives_up_waiting_in_time_for_another_try_within_the_lease():
    import mrag.locking

    # botocore's own 60 s read and its retries: one renewal left unanswered lost a 60 s lease (given up at 50)
    config = s3_client({"aws_region": REGION})._client_config
    waits = (config.connect_timeout + config.read_timeout) * (config.retries or {}).get("total_max_attempts", 5)
    assert waits < mrag.locking.LEASE * (1 - mrag.locking.MARGIN) - mrag.locking.LEASE / 3


def test_a_creation_cut_off_on_s3_is_made_again_with_another_model(s3_uri, storage_options):
    # its empty chunks table was reopened as it was: "Provided schema does not match existing table schema"
    from mrag.connection import connect
    from mrag.rows import chunk_schema
    from mrag.store import CHUNKS

    class Wider(FakeEmbedder):
        name, dim = "wider", 64

    connect(s3_uri, storage_options).create_table(CHUNKS, schema=chunk_schema(32, 4, 8, {}))  # no manifest
    index = Index.open(s3_uri, embedder=Wider(), storage_options=storage_options)
    index.add(DOCS[:1])
    assert index.store.count() == 1 and index.store.dim == 64
    other = s3_uri + "2"  # one with rows and no manifest is a damaged index: refused, not replaced
    Index.open(other, embedder=FakeEmbedder(), storage_options=storage_options).add(DOCS[:1])
    connect(other, storage_options).drop_table("manifest")
    with pytest.raises(StoreError, match="holds 1 indexed chunks but no manifest"):
        Index.open(other, embedder=FakeEmbedder(), storage_options=storage_options)


def test_missing_index_on_s3_is_a_clear_error(s3_uri, storage_options):
    with pytest.raises(StoreError, match="no mrag index at s3://"):
        Index.open(s3_uri, storage_options=storage_options, create=False)
    with pytest.raises(StoreError, match="no mrag index"):
        Store.open(s3_uri, storage_options)


def test_local_paths_still_need_an_existing_folder(tmp_path):
    missing = tmp_path / "nothing-here"
    assert not Store.exists(str(missing))
    assert not missing.exists()  # checking did not create it
