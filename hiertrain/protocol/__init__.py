"""what a question says and how a reply is read: wordings, conditions, answers, open set, the protocol object."""
