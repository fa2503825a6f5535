//! A statement built as text with bound values, in the placeholder style
//! of the backend. The stats queries are built by hand: a `UNION ALL` of
//! two grouped branches under a third `GROUP BY`, with a `CASE` tree for
//! time zones, reads more plainly as SQL than through a query builder.

use sea_orm::{DbBackend, Statement, Value};

pub struct Sql {
    pub backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub fn new(backend: DbBackend) -> Self {
        Sql {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub fn bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => {
                let n = self.values.len();
                self.text.push_str(&format!("${n}"));
            }
            _ => self.text.push('?'),
        }
        self
    }

    /// Appends `(p1, p2, …)` for the values.
    pub fn bind_list<V: Into<Value> + Clone>(&mut self, values: &[V]) -> &mut Self {
        self.push("(");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v.clone());
        }
        self.push(")")
    }

    pub fn is_postgres(&self) -> bool {
        self.backend == DbBackend::Postgres
    }

    /// Unix seconds of a timestamp column, rounded down.
    pub fn epoch(&self, column: &str) -> String {
        if self.is_postgres() {
            format!("CAST(FLOOR(EXTRACT(EPOCH FROM {column})) AS BIGINT)")
        } else {
            format!("unixepoch({column})")
        }
    }

    /// The smaller of two nullable values, ignoring a null.
    pub fn least(&self, a: &str, b: &str) -> String {
        if self.is_postgres() {
            format!("LEAST({a}, {b})")
        } else {
            format!("MIN(COALESCE({a}, {b}), COALESCE({b}, {a}))")
        }
    }

    /// The larger of two nullable values, ignoring a null.
    pub fn greatest(&self, a: &str, b: &str) -> String {
        if self.is_postgres() {
            format!("GREATEST({a}, {b})")
        } else {
            format!("MAX(COALESCE({a}, {b}), COALESCE({b}, {a}))")
        }
    }

    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}
