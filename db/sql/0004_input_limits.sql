-- Schema revision 0004: limits on what a user can insert. Applied by alembic/versions/0004_input_limits.py.
SELECT 1;
