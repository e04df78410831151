-- Undo schema revision 0004.
SELECT 1;
