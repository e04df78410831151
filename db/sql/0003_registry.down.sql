-- Undo schema revision 0003.
SELECT 1;
