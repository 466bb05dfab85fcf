//! pyfcgi's FastCGI client: the web-server side of the protocol, used by `pyfcgi request`,
//! `pyfcgi bench` and the tests.
//!
//! * [`Address`]: where a responder listens (`tcp:HOST:PORT`, `HOST:PORT`, `unix:PATH`) and
//!   [`Stream`], the connected transport.
//! * [`Request`]: the FastCGI params a web server (nginx, or IIS with [`RequestBuilder::iis`])
//!   would send for an HTTP request, plus the body.
//! * [`Connection`]: one FastCGI connection; sends requests one at a time, writing the body
//!   while it reads the response, and answers with a [`Response`].
//! * [`Response`]: what the application sent; [`Response::head`] parses the CGI header block.
//! * [`Spawned`]: starts a responder the way a web server does: on Windows exactly as IIS does
//!   (its named pipe, or a listening socket, on stdin); on Unix with a connected socket pair
//!   (IIS emulation) or a listening socket (FastCGI spec §2.2).
//! * [`cli`]: the `pyfcgi request` command; [`bench`]: the `pyfcgi bench` load generator;
//!   [`top`]: `pyfcgi top`, a live view of a server's status endpoint.
//!
//! ```
//! # async fn demo() -> Result<(), pyfcgi_client::ClientError> {
//! use pyfcgi_client::{Address, Connection, Request};
//!
//! let address: Address = "127.0.0.1:9000".parse()?;
//! let mut conn = Connection::new(address.connect().await?);
//! let request = Request::builder("GET", "/hello?name=world").build()?;
//! let response = conn.request(&request).await?;
//! let head = response.head()?;
//! println!("{} {}", head.status, head.reason);
//! # Ok(())
//! # }
//! ```

mod address;
pub mod bench;
mod bench_mux;
pub mod cli;
mod connection;
mod error;
#[cfg(test)]
mod fake_responder;
mod request;
mod response;
mod spawn;
pub mod top;

pub use address::{Address, Stream};
pub use connection::{Connection, End, Output};
pub use error::ClientError;
pub use pyfcgi_proto::{Params, ProtocolStatus};
pub use request::{Request, RequestBuilder};
pub use response::{HeadError, Response, ResponseHead};
pub use spawn::{ChildOutput, Spawned};
