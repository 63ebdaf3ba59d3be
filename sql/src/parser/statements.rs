//! Statements: what a script is made of, and the SELECT a query runs.

use serde_json::{Map, Value};

use super::Parser;
use crate::SqlError;
use crate::expr::{Select, SelectItem};
use crate::lexer::Tok;

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateStream {
        name: String,
        replication: u32,
        shards: u32,
        backlog_secs: u32,
    },
    /// `CREATE STREAM s AS SELECT …`: a persistent query into a new stream.
    CreateStreamAs {
        name: String,
        select: Select,
        replication: u32,
        shards: u32,
        backlog_secs: u32,
    },
    ShowStreams,
    ShowConnectors,
    ShowSubscriptions,
    ShowNodes,
    ShowQueries,
    DropStream {
        name: String,
        if_exists: bool,
    },
    CreateConnector {
        name: String,
        kind: &'static str,
        target: String,
        options: Map<String, Value>,
        if_not_exist: bool,
    },
    PauseConnector(String),
    ResumeConnector(String),
    DropConnector {
        name: String,
        if_exists: bool,
    },
    Insert {
        stream: String,
        row: Map<String, Value>,
    },
    /// `INSERT INTO s SELECT …`: a persistent query into an existing stream.
    InsertSelect {
        stream: String,
        select: Select,
    },
    /// `SELECT … EMIT CHANGES`: a push query.
    Select(Select),
    TerminateQuery(String),
    PauseQuery(String),
    ResumeQuery(String),
    DropQuery {
        name: String,
        if_exists: bool,
    },
}

impl Parser {
    pub(super) fn statement(&mut self) -> Result<Statement, SqlError> {
        if self.eat_kw("create") {
            if self.eat_kw("stream") {
                return self.create_stream();
            }
            if self.is_kw("view") {
                return self.error("STREAM, SOURCE or SINK (views are not supported)");
            }
            let kind = if self.eat_kw("source") {
                "SOURCE"
            } else if self.eat_kw("sink") {
                "SINK"
            } else {
                return self.error("STREAM, SOURCE or SINK");
            };
            self.kw("connector")?;
            let name = self.name("a connector name")?;
            let mut if_not_exist = false;
            if self.eat_kw("if") {
                self.kw("not")?;
                self.kw("exist")?;
                if_not_exist = true;
            }
            self.kw(if kind == "SOURCE" { "from" } else { "to" })?;
            let target = self.name("a connector type")?;
            let mut options = Map::new();
            if self.eat_kw("if") {
                self.kw("not")?;
                self.kw("exist")?;
                if_not_exist = true;
            }
            self.kw("with")?;
            self.sym("(")?;
            loop {
                let key = self.name("an option name")?;
                self.sym("=")?;
                options.insert(key, self.constant()?);
                if self.eat_sym(",") {
                    continue;
                }
                break;
            }
            self.sym(")")?;
            return Ok(Statement::CreateConnector {
                name,
                kind,
                target,
                options,
                if_not_exist,
            });
        }
        if self.eat_kw("show") {
            return if self.eat_kw("streams") {
                Ok(Statement::ShowStreams)
            } else if self.eat_kw("connectors") {
                Ok(Statement::ShowConnectors)
            } else if self.eat_kw("subscriptions") {
                Ok(Statement::ShowSubscriptions)
            } else if self.eat_kw("nodes") {
                Ok(Statement::ShowNodes)
            } else if self.eat_kw("queries") {
                Ok(Statement::ShowQueries)
            } else {
                self.error("STREAMS, CONNECTORS, QUERIES, SUBSCRIPTIONS or NODES")
            };
        }
        if self.eat_kw("drop") {
            let what = if self.eat_kw("stream") {
                "stream"
            } else if self.eat_kw("connector") {
                "connector"
            } else if self.eat_kw("query") {
                "query"
            } else {
                return self.error("STREAM, CONNECTOR or QUERY");
            };
            let name = self.name("a name")?;
            let if_exists = if self.eat_kw("if") {
                self.kw("exists")?;
                true
            } else {
                false
            };
            return Ok(match what {
                "stream" => Statement::DropStream { name, if_exists },
                "connector" => Statement::DropConnector { name, if_exists },
                _ => Statement::DropQuery { name, if_exists },
            });
        }
        if self.eat_kw("pause") {
            return if self.eat_kw("connector") {
                Ok(Statement::PauseConnector(self.name("a connector name")?))
            } else if self.eat_kw("query") {
                Ok(Statement::PauseQuery(self.name("a query name")?))
            } else {
                self.error("CONNECTOR or QUERY")
            };
        }
        if self.eat_kw("resume") {
            return if self.eat_kw("connector") {
                Ok(Statement::ResumeConnector(self.name("a connector name")?))
            } else if self.eat_kw("query") {
                Ok(Statement::ResumeQuery(self.name("a query name")?))
            } else {
                self.error("CONNECTOR or QUERY")
            };
        }
        if self.eat_kw("terminate") {
            self.kw("query")?;
            return Ok(Statement::TerminateQuery(self.name("a query name")?));
        }
        if self.eat_kw("insert") {
            self.kw("into")?;
            let stream = self.name("a stream name")?;
            if self.eat_kw("select") {
                let select = self.select()?;
                self.optional_emit_changes()?;
                return Ok(Statement::InsertSelect { stream, select });
            }
            self.sym("(")?;
            let mut cols = vec![self.column("a column name")?];
            while self.eat_sym(",") {
                cols.push(self.column("a column name")?);
            }
            self.sym(")")?;
            self.kw("values")?;
            self.sym("(")?;
            let at = self.peek().clone();
            let mut vals = vec![self.constant()?];
            while self.eat_sym(",") {
                vals.push(self.constant()?);
            }
            self.sym(")")?;
            if cols.len() != vals.len() {
                return Self::error_at(&at, format!("{} columns but {} values", cols.len(), vals.len()));
            }
            return Ok(Statement::Insert {
                stream,
                row: cols.into_iter().zip(vals).collect(),
            });
        }
        if self.eat_kw("select") {
            let select = self.select()?;
            if !self.is_kw("emit") {
                return self.error("EMIT CHANGES (a SELECT without it reads a view, and views are not supported)");
            }
            self.optional_emit_changes()?;
            return Ok(Statement::Select(select));
        }
        self.error("a statement (CREATE, SHOW, DROP, PAUSE, RESUME, TERMINATE, INSERT or SELECT)")
    }

    fn optional_emit_changes(&mut self) -> Result<(), SqlError> {
        if self.eat_kw("emit") {
            self.kw("changes")?;
        }
        Ok(())
    }

    fn stream_options(&mut self) -> Result<(u32, u32, u32), SqlError> {
        let (mut replication, mut shards, mut backlog_secs) = (1, 1, 0);
        if self.eat_kw("with") {
            self.sym("(")?;
            loop {
                let at = self.peek().clone();
                let key = self.name("REPLICATE, SHARD_COUNT or BACKLOG_DURATION")?;
                self.sym("=")?;
                match key.to_ascii_uppercase().as_str() {
                    "REPLICATE" => replication = self.int("a replication factor")?,
                    "SHARD_COUNT" => shards = self.int("a shard count")?,
                    "BACKLOG_DURATION" => backlog_secs = self.int("a backlog duration in seconds")?,
                    _ => return Self::error_at(&at, format!("unknown stream option {key:?}")),
                }
                if self.eat_sym(",") {
                    continue;
                }
                break;
            }
            self.sym(")")?;
        }
        Ok((replication, shards, backlog_secs))
    }

    fn create_stream(&mut self) -> Result<Statement, SqlError> {
        let name = self.name("a stream name")?;
        if self.eat_kw("as") {
            self.kw("select")?;
            let select = self.select()?;
            self.optional_emit_changes()?;
            let (replication, shards, backlog_secs) = self.stream_options()?;
            return Ok(Statement::CreateStreamAs {
                name,
                select,
                replication,
                shards,
                backlog_secs,
            });
        }
        let (replication, shards, backlog_secs) = self.stream_options()?;
        Ok(Statement::CreateStream {
            name,
            replication,
            shards,
            backlog_secs,
        })
    }

    /// The rest of a SELECT after its keyword.
    fn select(&mut self) -> Result<Select, SqlError> {
        let mut items = Vec::new();
        let mut names: Vec<String> = Vec::new();
        loop {
            let at = self.peek().clone();
            let item = if self.eat_sym("*") {
                SelectItem::Wildcard
            } else {
                let expr = self.checked_expr()?;
                let alias = if self.eat_kw("as") {
                    Some(self.column("an alias")?)
                } else {
                    None
                };
                SelectItem::Expr { expr, alias }
            };
            if let Some(n) = item.name() {
                if names.contains(&n) {
                    return Self::error_at(&at, format!("two columns are named {n:?}: give one an alias (AS)"));
                }
                names.push(n);
            }
            items.push(item);
            if !self.eat_sym(",") {
                break;
            }
        }
        self.kw("from")?;
        let at = self.peek().clone();
        if matches!(&at.tok, Tok::Word(w) if ["tumble", "hop", "session"].contains(&w.to_ascii_lowercase().as_str()))
            && self.peek_at(1).tok == Tok::Sym("(")
        {
            return Self::error_at(&at, "windows (TUMBLE, HOP, SESSION) are not supported yet".into());
        }
        if at.tok == Tok::Sym("(") {
            return Self::error_at(&at, "subqueries are not supported yet".into());
        }
        let from = self.name("a stream name")?;
        for join in ["join", "cross", "inner", "left", "right", "full", "natural"] {
            if self.is_kw(join) {
                let t = self.peek().clone();
                return Self::error_at(&t, "joins are not supported yet".into());
            }
        }
        if self.is_sym(",") {
            let t = self.peek().clone();
            return Self::error_at(&t, "a query reads one stream (joins are not supported yet)".into());
        }
        let condition = if self.eat_kw("where") {
            Some(self.checked_expr()?)
        } else {
            None
        };
        if self.is_kw("group") || self.is_kw("having") {
            let t = self.peek().clone();
            return Self::error_at(&t, "GROUP BY and HAVING (aggregation) are not supported yet".into());
        }
        Ok(Select { items, from, condition })
    }
}
