"""How an agent process starts: the environment it is granted, the user it runs as, and the sandbox around it."""
