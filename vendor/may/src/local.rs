use std::any::TypeId;
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::{align_of, size_of, MaybeUninit};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use crate::coroutine_impl::Coroutine;
use crate::join::Join;
use generator::get_local_data;

// thread local map storage
thread_local! {static LOCALMAP: LocalMap = RefCell::new(HashMap::default());}

/// coroutine local storage
pub struct CoroutineLocal {
    // current coroutine handle
    co: Coroutine,
    // when panic happens, we need to trigger the join here (none for a detached spawn)
    join: Option<Arc<Join>>,
    // real local data hash map
    local_data: LocalMap,
    // the embedding runtime's value (see `with_runtime_local`)
    runtime: OnceCell<RuntimeLocal>,
}

/// Words of room for the embedding runtime's value inside the local storage itself.
const RUNTIME_LOCAL_WORDS: usize = 24;

/// The embedding runtime's value, kept in the coroutine's local storage: inline when it fits
/// in [`RUNTIME_LOCAL_WORDS`] words with at most a word's alignment (no allocation of its own
/// per coroutine), else boxed. The value's type is kept beside it, so that an access compares
/// two constants instead of calling `Any::type_id` through a vtable.
struct RuntimeLocal {
    type_id: TypeId,
    /// The value itself, or a `*mut T` from `Box::into_raw` when it does not fit.
    data: MaybeUninit<[usize; RUNTIME_LOCAL_WORDS]>,
    /// Drops the value in `data` (a `drop_runtime_value::<T>`).
    drop: unsafe fn(*mut u8),
}

/// Whether a `T` is kept inline in a [`RuntimeLocal`].
const fn fits_inline<T>() -> bool {
    size_of::<T>() <= size_of::<[usize; RUNTIME_LOCAL_WORDS]>()
        && align_of::<T>() <= align_of::<usize>()
}

/// Drops the `T` that `data` holds (see [`RuntimeLocal`]).
///
/// # Safety
///
/// `data` points at a [`RuntimeLocal`]'s data holding a live `T`, dropped at most once.
unsafe fn drop_runtime_value<T>(data: *mut u8) {
    unsafe {
        if fits_inline::<T>() {
            ptr::drop_in_place(data.cast::<T>());
        } else {
            drop(Box::from_raw(data.cast::<*mut T>().read()));
        }
    }
}

impl RuntimeLocal {
    fn new<T: Default + 'static>() -> RuntimeLocal {
        let mut data = MaybeUninit::<[usize; RUNTIME_LOCAL_WORDS]>::uninit();
        let at = data.as_mut_ptr().cast::<u8>();
        // SAFETY: a `T` that fits is written where it fits, aligned; otherwise a pointer is
        // written at the start, which is aligned for it.
        unsafe {
            if fits_inline::<T>() {
                at.cast::<T>().write(T::default());
            } else {
                at.cast::<*mut T>()
                    .write(Box::into_raw(Box::new(T::default())));
            }
        }
        RuntimeLocal {
            type_id: TypeId::of::<T>(),
            data,
            drop: drop_runtime_value::<T>,
        }
    }

    /// The value, as a `T`.
    ///
    /// # Safety
    ///
    /// It is a `T` (`type_id` is `T`'s).
    unsafe fn get<T>(&self) -> &T {
        let at = self.data.as_ptr().cast::<u8>();
        // SAFETY: `new::<T>` stored it this way, and it lives until `self` drops.
        unsafe {
            if fits_inline::<T>() {
                &*at.cast::<T>()
            } else {
                &*at.cast::<*mut T>().read()
            }
        }
    }
}

impl Drop for RuntimeLocal {
    fn drop(&mut self) {
        // SAFETY: `data` holds the value `new` stored, dropped here once.
        unsafe { (self.drop)(self.data.as_mut_ptr().cast()) }
    }
}

impl CoroutineLocal {
    /// create coroutine local storage
    pub fn new(co: Coroutine, join: Option<Arc<Join>>) -> Box<Self> {
        Box::new(CoroutineLocal {
            co,
            join,
            local_data: RefCell::new(HashMap::default()),
            runtime: OnceCell::new(),
        })
    }

    // get the coroutine handle
    pub fn get_co(&self) -> &Coroutine {
        &self.co
    }

    // get the join handle
    pub fn get_join(&self) -> Option<Arc<Join>> {
        self.join.clone()
    }
}

#[inline]
pub fn get_co_local_data() -> Option<NonNull<CoroutineLocal>> {
    let ptr = get_local_data();
    NonNull::new(ptr.cast())
}

/// Runs `f` with the current coroutine's runtime value, made with `T::default()` on first
/// use; `None` outside a coroutine.
///
/// A runtime built on `may` keeps its per-coroutine state here: one value per coroutine,
/// reached without the hash map of [`LocalKey`] (no hashing on each access, no map to
/// allocate), dropped with the coroutine's local storage. One type per program: a value of
/// another type than the first one asked for makes this panic.
///
/// # Safety
///
/// The value moves between OS threads with its coroutine, and is dropped by the worker that
/// destroys the coroutine: using it from whichever thread the coroutine runs on must be sound
/// (what `Send` says; it is not required, so that a runtime may keep a value that is tied to
/// an OS thread while its coroutine runs, if it lets go of it before every switch).
#[inline]
pub unsafe fn with_runtime_local<T: Default + 'static, R>(f: impl FnOnce(&T) -> R) -> Option<R> {
    let local = get_co_local_data()?;
    // SAFETY: the local storage lives as long as the running coroutine, and only the
    // coroutine itself reaches it.
    let slot = &unsafe { local.as_ref() }.runtime;
    let local = slot.get_or_init(RuntimeLocal::new::<T>);
    assert!(
        local.type_id == TypeId::of::<T>(),
        "with_runtime_local: one type per program"
    );
    // SAFETY: the value is a `T`: its type id is `T`'s.
    let value = unsafe { local.get::<T>() };
    Some(f(value))
}

#[inline]
fn with<F: FnOnce(&LocalMap) -> R, R>(f: F) -> R {
    match get_co_local_data() {
        Some(v) => f(&(unsafe { v.as_ref() }.local_data)),
        None => LOCALMAP.with(|data| f(data)),
    }
}

pub type LocalMap = RefCell<HashMap<TypeId, Box<dyn Opaque>, BuildHasherDefault<IdHasher>>>;

pub trait Opaque {}
impl<T> Opaque for T {}

/// A key for local data stored in a coroutine.
///
/// This type is generated by the `coroutine_local!` macro and performs very
/// similarly to the `thread_local!` macro and `std::thread::LocalKey` types.
/// Data associated with a `LocalKey<T>` is stored inside of a coroutine,
/// and the data is destroyed when the coroutine is completed.
///
/// coroutine-local data requires the `'static` bound to ensure it lives long
/// enough. When a key is accessed for the first time the coroutine's data is
/// initialized with the provided initialization expression to the macro.
pub struct LocalKey<T> {
    // "private" fields which have to be public to get around macro hygiene, not
    // included in the stability story for this type. Can change at any time.
    #[doc(hidden)]
    pub __key: fn() -> TypeId,
    #[doc(hidden)]
    pub __init: fn() -> T,
}

#[derive(Default)]
pub struct IdHasher {
    id: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, _bytes: &[u8]) {
        // TODO: need to do something sensible
        panic!("can only hash u64");
    }

    fn write_u64(&mut self, u: u64) {
        self.id = u;
    }

    fn finish(&self) -> u64 {
        self.id
    }
}

impl<T: 'static> LocalKey<T> {
    /// Access this coroutine-local key, running the provided closure with a
    /// reference to the value.
    ///
    /// This function will access this coroutine-local key to retrieve the data
    /// associated with the current coroutine and this key. If this is the first
    /// time this key has been accessed on this coroutine, then the key will be
    /// initialized with the initialization expression provided at the time the
    /// `coroutine_local!` macro was called.
    ///
    /// The provided closure will be provided a shared reference to the
    /// underlying data associated with this coroutine-local-key. The data itself
    /// is stored inside of the current coroutine.
    ///
    /// if it's not accessed in a coroutine context, it will use the thread local
    /// storage as a backend, so it's safe to use it in thread context
    ///
    /// # Panics
    ///
    /// This function can possibly panic for a number of reasons:
    ///
    /// * If the initialization expression is run and it panics
    /// * If the closure provided panics
    #[inline]
    pub fn with<F, R>(&'static self, f: F) -> R
    where
        F: FnOnce(&T) -> R,
    {
        let key = (self.__key)();
        with(|data| {
            let raw_pointer = {
                let mut data = data.borrow_mut();
                let entry = data.entry(key).or_insert_with(|| Box::new((self.__init)()));
                &**entry as *const dyn Opaque as *const T
            };
            unsafe { f(&*raw_pointer) }
        })
    }
}
