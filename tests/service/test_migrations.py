"""The Alembic migrations build exactly the schema the models declare, and re-running is a no-op."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.store import Store
from service.store.models import Base


def test_migrations_match_models(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.migrate()
    store.migrate()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    store.dispose()
    assert diff == [], f"models and migrations differ; add a revision under service/store/migrations: {diff}"
