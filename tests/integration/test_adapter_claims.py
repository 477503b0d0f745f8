"""The adapters in the batch key on PostgreSQL and SQLite: jobs batch only with jobs of
the same LoRAs, weights and ControlNet (canonical JSON text compared in SQL)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from easel.shared.params import params_of
from easel.worker.engine.claims import claim_batch
from tests.factories import insert_job


def test_only_jobs_with_the_same_adapters_share_a_batch(sessions: sessionmaker[Session]) -> None:
    ink = [{"name": "ink", "weight": 0.5}, {"name": "wash", "weight": 1.0}]
    head = insert_job(sessions, age=10, loras=ink)
    same = insert_job(sessions, age=9, loras=[dict(item) for item in ink])
    insert_job(sessions, age=8, loras=[{"name": "ink", "weight": 0.6}, {"name": "wash", "weight": 1.0}])
    insert_job(sessions, age=7)
    insert_job(sessions, age=6, loras=ink, control={"model": "edges", "scale": 1.0})
    with sessions() as session:
        batch = claim_batch(session, "w", max_images=10)
        assert [job.id for job in batch] == [head, same]
        assert params_of(batch[0]).batch_key() == params_of(batch[1]).batch_key()
        assert batch[0].loras == ink
    with sessions() as session:
        assert len(claim_batch(session, "w", max_images=10)) == 1  # the 0.6 weight alone
        assert [job.loras for job in claim_batch(session, "w", max_images=10)] == [None]
        (controlled,) = claim_batch(session, "w", max_images=10)
        assert controlled.control == {"model": "edges", "scale": 1.0}
