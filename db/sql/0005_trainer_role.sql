-- Schema revision 0005: least-privilege role for trainer workers. Applied by alembic/versions/0005_trainer_role.py.
SELECT 1;
