-- Undo schema revision 0005.
SELECT 1;
