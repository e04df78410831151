-- Schema revision 0003: model registry, on-demand evaluations, metrics history. Applied by alembic/versions/0003_registry.py.
SELECT 1;
